# Debian packages the box needs. The appliance's Python dependencies come from
# PyPI (pinned by constraints.txt) into its own venv, not from apt.
{%- from "appliance/map.jinja" import appliance with context %}

appliance-packages:
  pkg.installed:
    - pkgs:
      - python3             # Debian's /usr/bin/python3 runs the venv
      - python3-venv
      - ca-certificates
      - systemd             # appliance.service starts supervisord
      - systemd-sysv
      - dbus                # systemctl talks to a booted systemd through it
      - iproute2
      - nftables            # firewall.sls
      - logrotate           # logrotate.sls
      - certbot             # tls.sls: ACME certificates (used when tls:mode is certbot)
      - openssl             # operators inspect certificates with it
    - refresh: False        # install.sh runs apt-get update once before Salt
    - install_recommends: False
