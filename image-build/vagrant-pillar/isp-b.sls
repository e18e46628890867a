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

    registry:
      url: http://192.168.77.10:8080/
  tls:
    names:
      - 192.168.77.12
  firewall:
    # Port 25 from the demo network: the registry lists the members' addresses once the
    # operator has signed it; until then this lets the boxes reach each other.
    mx_static_sources:
      - 192.168.77.0/24
