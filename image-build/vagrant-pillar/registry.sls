# The consortium's registry operator. Runs the appliance too (its CLI signs the registry:
# `appliance registry init | add-member | sign | publish`, output served from /srv/registry
# on port 8080 by the Vagrantfile's registry-http step).
appliance:
  config:
    box:
      role: member
      hostname: registry.consortium.test
      domains:
        - consortium.test
      member_id: registry
  firewall:
    extra_tcp: [8080]               # the signed registry, over HTTP (TUF signs it)
