"""The web console (twisted.web): server-rendered pages for the operator, a customer page, and the
public autoconfig / MTA-STS resources. docs/console.md."""
