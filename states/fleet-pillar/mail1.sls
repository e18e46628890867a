# The first mail box (relay + IMAP/POP); hostname and minion id differ per box.
appliance:
  config:
    box:
      hostname: mx1.example.net
  fleet:
    master: 10.0.0.10
