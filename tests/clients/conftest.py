"""Real IMAP clients against a running box (module-scoped, loopback only): the access tests' box fixture."""

from tests.access.conftest import access_box  # noqa: F401  (the fixture, re-exported for these modules)
