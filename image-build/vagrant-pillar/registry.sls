# The consortium's registry operator. Runs the appliance too (its CLI signs the registry:
# `appliance registry init | add-member | publish` in /srv/consortium, whose public/ is
# copied to /srv/registry and served on port 8080 by the Vagrantfile's registry-http step;
# image-build/vagrant-consortium.sh runs them). It trusts the registry it serves, like the others.
appliance:
  config:
    box:
      role: member
      hostname: registry.consortium.test
      domains:
        - consortium.test
      member_id: registry
    registry:
      url: http://192.168.77.10:8080/
      root: /etc/appliance/registry-root.json
      poll_interval: 30
  tls:
    names:
      - 192.168.77.10
  firewall:
    extra_tcp: [8080]               # the signed registry, over HTTP (TUF signs it)
