# An edge box (a hobbyist's colo server): sends everything through isp-a's relay.
appliance:
  config:
    box:
      role: edge
      hostname: mx.colo.test
      domains:
        - colo.test
    relay:
      upstream:
        host: 192.168.77.11
        port: 587
        username: colo@isp-a.test
        password_file: /etc/appliance/upstream.password
        # isp-a's self-signed certificate is in the demo's bundle (vagrant-consortium.sh).
        ca_file: /etc/appliance/consortium-ca.pem
    registry:
      url: http://192.168.77.10:8080/
      root: /etc/appliance/registry-root.json   # the operator's 1.root.json (vagrant-consortium.sh)
      poll_interval: 30
  upstream:
    # Demo only: image-build/vagrant-consortium.sh makes this account on isp-a.
    password: demo colo password
  tls:
    names:
      - 192.168.77.20               # isp-a's relay route to colo.test names the address
  firewall:
    mx_static_sources:
      - 192.168.77.11/32              # mail for colo.test arrives from its upstream
