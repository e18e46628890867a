"""The IMAP protocol layer: typed commands (``types``), the parser (``parser.CommandReader``),
the serializer (``wire``) and modified UTF-7 (``mutf7``).  No I/O, no storage, no Twisted."""
