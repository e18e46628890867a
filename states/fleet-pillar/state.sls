# The "state" box: the fleet's Redis and PostgreSQL ([state] backend = "shared" on the
# mail boxes points at it). It runs the appliance too, but takes no customer mail.
appliance:
  config:
    box:
      hostname: state.example.net
      member_id: example-net
  state_services: [redis, postgresql]
  statebox:
    redis:
      bind: [127.0.0.1, 10.0.0.10]     # the fleet's private network
    postgresql:
      listen: [localhost, 10.0.0.10]
  fleet:
    master: 10.0.0.10                  # the master runs here too (fleet:serve)
    serve: true
  firewall:
    extra_tcp: [4505, 4506, 5432, 6379]   # extra_tcp opens them to everyone: keep the fleet on a private network
