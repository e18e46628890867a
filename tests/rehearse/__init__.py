"""The Debian peer catalogue (scripts/peercheck.py) and the clean-install rehearsal."""
