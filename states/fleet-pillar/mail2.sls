# The second mail box.
appliance:
  config:
    box:
      hostname: mx2.example.net
  fleet:
    master: 10.0.0.10
