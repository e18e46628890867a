"""Every SMTP reply the relay's policy and protocol code can give, in one place.

A ``Verdict`` is what a check (or the protocol layer) decides: the SMTP code,
the RFC 3463 enhanced status code, the text, and the name of the check that
said it (its *origin*, as Maddy's ``exterrors`` carry one). Protocol code
never writes a reply string of its own; it asks this module.

Reply codes follow DESIGN.md: a refused outsider gets ``554 5.7.1`` at the
greeting, a rate limit is never a 5xx, and an internal error is ``451 4.3.0``
(aiosmtpd's own default of ``500`` is translated here, see ``translate``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Verdict:
    code: int
    enhanced: str
    text: str
    origin: str = "protocol"
    # 421 always closes the connection (RFC 5321 3.8); a refusal at the greeting does too.
    close: bool = False

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    def __str__(self) -> str:
        return self.reply()


@dataclass(frozen=True)
class Reply:
    """A reply template; ``.verdict(origin, **values)`` fills in the text."""

    code: int
    enhanced: str
    text: str
    close: bool = False

    def verdict(self, origin: str = "protocol", **values: object) -> Verdict:
        return Verdict(self.code, self.enhanced, self.text.format(**values) if values else self.text, origin,
                       self.close or self.code == 421)

    def reply(self, **values: object) -> str:
        return self.verdict(**values).reply()


def closing(v: Verdict) -> Verdict:
    return replace(v, close=True)


# --- success --------------------------------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}")
XUSER_OK = Reply(250, "2.0.0", "{login}")
XAUTHCHECK_OK = Reply(250, "2.0.0", "ok")
XAUTHFAIL_OK = Reply(250, "2.0.0", "recorded")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
BYE = Reply(221, "2.0.0", "Bye")

# --- connection (greeting) ------------------------------------------------------------------
NOT_A_MEMBER = Reply(554, "5.7.1", "Access denied: {ip} is not a relay of an active consortium member", close=True)
# Temporary (docs/practice.md): a suspended member keeps its queue and retries, nothing bounces,
# and its mail flows again once it is reactivated (RFC 5321 4.2.1: 4yz, the condition may end).
MEMBER_SUSPENDED = Reply(421, "4.7.1", "Member {member} is suspended from the consortium; try again later", close=True)
REGISTRY_EXPIRED = Reply(421, "4.7.0", "Consortium registry expired; try again later")
REGISTRY_MISSING = Reply(421, "4.7.0", "Consortium registry not available; try again later")
INTERNAL_PEER_REFUSED = Reply(554, "5.7.1", "Access denied: uid {uid} may not use the internal socket", close=True)

# --- TLS and authentication -----------------------------------------------------------------
STARTTLS_FIRST = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_NOT_OFFERED = Reply(503, "5.5.1", "AUTH is not offered on this port")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_BAD_MECH = Reply(504, "5.5.4", "Unrecognized authentication type (use PLAIN or LOGIN)")
AUTH_SYNTAX = Reply(501, "5.5.2", "Cannot decode AUTH data")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# The shared accounts database is unreachable (issue 16 item 4): RFC 4954 6, a temporary failure.
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure: accounts unavailable, try again later")
CLIENT_CERT_MISSING = Reply(530, "5.7.1", "Member {member} must present its pinned TLS client certificate (STARTTLS)")
CLIENT_CERT_WRONG = Reply(554, "5.7.1", "TLS client certificate does not match member {member}'s pins", close=True)
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ALREADY = Reply(503, "5.5.1", "Already in TLS")

# --- internal socket ------------------------------------------------------------------------
XUSER_REQUIRED = Reply(530, "5.7.0", "XUSER required before MAIL")
XUSER_SYNTAX = Reply(501, "5.5.4", "Syntax: XUSER login client-address protocol")
XUSER_UNKNOWN = Reply(550, "5.7.1", "No such enabled account")
XUSER_ALREADY = Reply(503, "5.5.1", "XUSER already given in this session")
XAUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: {verb} client-address [protocol] [LOGIN=xtext]")

# --- envelope -------------------------------------------------------------------------------
BAD_SENDER_SYNTAX = Reply(553, "5.1.7", "Sender address refused: {reason}")
BAD_RECIPIENT_SYNTAX = Reply(553, "5.1.3", "Recipient address refused: {reason}")
SENDER_NOT_OWNED = Reply(550, "5.7.1", "Sender address {sender} is not yours to use")
NULL_SENDER_REFUSED = Reply(550, "5.7.1", "Null sender not allowed for submission")
ACCOUNT_DISABLED = Reply(550, "5.7.1", "Account is disabled")
ACCOUNT_HELD = Reply(450, "4.7.1", "Account sending is on hold; contact your provider")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied: {domain} is not a domain of this box")
NO_SUCH_USER = Reply(550, "5.1.1", "No such mailbox: {recipient}")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients (at most {limit} per message)")
# RFC 3463 4.2.2 "mailbox full": temporary, so the sender keeps the message and retries (issue 13).
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full: {recipient} ({reason})")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message too big (at most {limit} bytes)")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header section too big (at most {limit} bytes)")

# --- message --------------------------------------------------------------------------------
BARE_NEWLINE = Reply(550, "5.5.2", "Message contains a bare CR or LF (RFC 5321 2.3.8); refused")
FROM_MISSING = Reply(550, "5.6.0", "Message has no From: header")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: address {address} is not yours to use")
HEADER_MALFORMED = Reply(550, "5.6.0", "Malformed message header: {reason}")

# --- mail from outside the consortium (relay.outsiders = "verify", docs/internet.md) -----------
DNSBL_LISTED = Reply(554, "5.7.1", "Service unavailable; client host {ip} is listed by {zone}")
# RFC 7489 6.7 / 10.3: a p=reject failure is best refused during the SMTP session.
DMARC_REJECT = Reply(550, "5.7.1", "Message refused: it fails DMARC and {domain} publishes p=reject (RFC 7489)")
# RFC 7208 8.6, RFC 6376 6.1.2, RFC 7489 6.6.3: a temporary DNS failure is answered 451 4.4.3.
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure while verifying the message ({what}); try again later")

# --- rate limits (appliance/ratelimit; DESIGN.md "Rate limits": never a 5xx) ----------------
RATE_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from {key} (limit {limit}); retry in {retry} s")
RATE_CONNECTION_RATE = Reply(421, "4.7.0", "Connection rate exceeded for {key} (limit {limit}); retry in {retry} s")
RATE_AUTH_FAILURES = Reply(421, "4.7.0", "too many authentication failures, retry in {retry} s")
# RFC 4954 6: 454 4.7.0 "Temporary authentication failure". The session stays open.
RATE_AUTH_ACCOUNT = Reply(454, "4.7.0", "Temporary authentication failure: too many failed logins for this "
                          "account, retry in {retry} s")
XAUTHOK_OK = Reply(250, "2.0.0", "remembered")
RATE_MESSAGES = Reply(450, "4.7.1", "Message rate limit exceeded for {key} (limit {limit}); retry in {retry} s")
RATE_RECIPIENTS = Reply(450, "4.7.1", "Recipient rate limit exceeded for {key} (limit {limit}); retry in {retry} s")
RATE_DAILY = Reply(450, "4.7.1", "Daily message quota reached for {key} (limit {limit}); retry in {retry} s")

# --- resources and errors -------------------------------------------------------------------
SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage; try again later")
INTERNAL_ERROR = Reply(451, "4.3.0", "Internal error; try again later")
SHUTTING_DOWN = Reply(421, "4.3.0", "Service shutting down; try again later")
TIMEOUT = Reply(421, "4.4.2", "Timeout; closing connection")

# --- aiosmtpd's built-in replies, given enhanced codes ----------------------------------------
# aiosmtpd writes some replies itself (before any hook runs). They are
# translated here so every reply the client sees comes from this module.
_AIOSMTPD: tuple[tuple[str, str], ...] = (
    ("500 Error: bad syntax", "500 5.5.2 Syntax error"),
    ("500 Command line too long", "500 5.5.6 Command line too long"),
    ("500 Error: strict ASCII mode", "500 5.5.2 Non-ASCII command (no SMTPUTF8)"),
    ("500 Error: command", "502 5.5.1 Command not recognized"),
    ("500 Error: (", INTERNAL_ERROR.reply()),
    ("500 Error: Cannot describe error", INTERNAL_ERROR.reply()),
    ("501 Syntax:", "501 5.5.4 Syntax error"),
    ("501 Error: BODY", "501 5.5.4 BODY must be 7BIT or 8BITMIME"),
    ("501 Error: SMTPUTF8", "501 5.5.4 Bad SMTPUTF8 parameter"),
    ("503 Error: send", "503 5.5.1 Send EHLO/HELO first"),
    ("503 Error: need MAIL", NEED_MAIL.reply()),
    ("503 Error: need RCPT", NEED_RCPT.reply()),
    ("503 Error: nested MAIL", NESTED_MAIL.reply()),
    ("530 Must issue a STARTTLS", STARTTLS_FIRST.reply()),
    ("530 5.7.0 Authentication required", AUTH_REQUIRED.reply()),
    ("553 5.1.3 Error: malformed address", "553 5.1.3 Malformed address"),
    ("554 Command refused due to lack of security", "554 5.7.0 Command refused: TLS handshake not accepted"),
    ("552 Error: message size exceeds", "552 5.3.4 Message size exceeds the maximum message size (see EHLO SIZE)"),
    ("555 MAIL FROM parameters", "555 5.5.4 MAIL FROM parameters not recognized"),
    ("555 RCPT TO parameters", "555 5.5.4 RCPT TO parameters not recognized"),
    ("502 EXPN", "502 5.5.1 EXPN not implemented"),
    ("502 Could not VRFY", "502 5.5.1 VRFY not available"),
    ("252 Cannot VRFY", "252 2.5.0 Cannot VRFY user"),
    ("250 OK", "250 2.0.0 Ok"),
    ("221 Bye", BYE.reply()),
    ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
)


def translate(reply: str) -> str:
    """aiosmtpd's built-in reply REPLY with an enhanced code (unchanged if it already has one)."""
    for prefix, better in _AIOSMTPD:
        if reply.startswith(prefix):
            return better
    return reply
