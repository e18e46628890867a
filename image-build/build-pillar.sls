# The build pillar: the states as every box made from the image first runs them
# (image-build/build.sh -> states/apply.sh). A box's operator changes it with their own
# pillar: `sudo /opt/appliance/src/install.sh my-pillar.sls` (docs/image.md).
# Per-box secrets are not here and not in the image: the states make a TLS certificate
# and a DKIM key during the build, build.sh deletes them, and appliance-firstboot makes
# new ones on each box's first boot.
appliance:
  config:
    box:
      role: member
      hostname: mx.example.test
      domains:
        - example.test
      member_id: example
      postmaster: postmaster@example.test
    registry:
      url: ""                 # local file only until the box joins a consortium
  tls:
    mode: self-signed
  service:
    start: auto               # in the chroot: enabled, not started
  firewall:
    enabled: true
