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
    registry:
      url: http://192.168.77.10:8080/
  upstream:
    # Demo only: make the account on isp-a with
    #   vagrant ssh isp-a -c 'sudo appliance user add colo@isp-a.test --password-stdin <<<"demo colo password"'
    password: demo colo password
  firewall:
    mx_static_sources:
      - 192.168.77.11/32              # mail for colo.test arrives from its upstream
