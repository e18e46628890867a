# The second mail box.
appliance:
  config:
    box:
      hostname: mx2.example.net
  fleet:
    master: 10.0.0.10
    # move:                         # mail2 receives `appliance user move --ssh` from mail1 (docs/fleet.md):
    #   authorized_keys: ["ssh-ed25519 AAAA... appliance-move@mail1"]   # mail1's move key (.pub line)
