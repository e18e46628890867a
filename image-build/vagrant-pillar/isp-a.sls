# Member ISP A of the demo consortium. It sponsors the edge box colo: colo sends everything
# through isp-a's submission port, and mail for colo.test goes from isp-a to colo's port 25.
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
        - colo.test                 # the edge box isp-a sponsors...
      relay_routes:
        colo.test:                  # ...and its next hop: colo's port 25, TLS verified against
          host: 192.168.77.20       # the consortium's certificates (ca_file; its cert names .20)
          port: 25
      # The demo's CA bundle: every machine's self-signed certificate, written by
      # image-build/vagrant-consortium.sh (the members themselves are pinned by the registry).
      ca_file: /etc/appliance/consortium-ca.pem
    registry:
      url: http://192.168.77.10:8080/
      root: /etc/appliance/registry-root.json   # the operator's 1.root.json (vagrant-consortium.sh)
      poll_interval: 30
  tls:
    names:
      - 192.168.77.11
  firewall:
    # Port 25 from the demo network: the registry lists the members' addresses once the
    # operator has signed it; until then this lets the boxes reach each other.
    mx_static_sources:
      - 192.168.77.0/24
