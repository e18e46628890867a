# Member ISP A of the demo consortium.
appliance:
  config:
    box:
      role: member
      hostname: mx.isp-a.test
      domains:
        - isp-a.test
      member_id: isp-a
      postmaster: postmaster@isp-a.test
    relay:
      relay_domains:
        - colo.test                 # the edge box isp-a sponsors
    registry:
      url: http://192.168.77.10:8080/
  tls:
    names:
      - 192.168.77.11
  firewall:
    # Port 25 from the demo network: the registry lists the members' addresses once the
    # operator has signed it; until then this lets the boxes reach each other.
    mx_static_sources:
      - 192.168.77.0/24
