# Member ISP B of the demo consortium.
appliance:
  config:
    box:
      role: member
      hostname: mx.isp-b.test
      domains:
        - isp-b.test
      member_id: isp-b
      postmaster: postmaster@isp-b.test
    relay:
      ca_file: /etc/appliance/consortium-ca.pem   # image-build/vagrant-consortium.sh writes it
    registry:
      url: http://192.168.77.10:8080/
      root: /etc/appliance/registry-root.json   # the operator's 1.root.json (vagrant-consortium.sh)
      poll_interval: 30
  tls:
    names:
      - 192.168.77.12
  firewall:
    # Port 25 from the demo network: the registry lists the members' addresses once the
    # operator has signed it; until then this lets the boxes reach each other.
    mx_static_sources:
      - 192.168.77.0/24
