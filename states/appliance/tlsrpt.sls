# The daily TLS-RPT trigger (RFC 8460 4.1: one report per day and policy domain):
# a systemd timer runs `appliance tlsrpt send` (yesterday's UTC day) shortly after
# midnight UTC. The command remembers what it sent, so a late or repeated run
# sends nothing twice. docs/internet.md "TLS-RPT".
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}

appliance-tlsrpt-units:
  file.managed:
    - names:
      - /etc/systemd/system/appliance-tlsrpt.service:
        - contents: |
            # Managed by Salt (states/appliance/tlsrpt.sls).
            [Unit]
            Description=ISP Mail Appliance: queue yesterday's TLS-RPT reports
            After=appliance.service
            [Service]
            Type=oneshot
            User={{ appliance.user }}
            ExecStart={{ appliance.venv }}/bin/appliance -c {{ appliance.config_file }} tlsrpt send
      - /etc/systemd/system/appliance-tlsrpt.timer:
        - contents: |
            # Managed by Salt (states/appliance/tlsrpt.sls).
            [Unit]
            Description=ISP Mail Appliance: daily TLS-RPT reports
            [Timer]
            OnCalendar=*-*-* 00:20:00 UTC
            RandomizedDelaySec=30min
            Persistent=true
            [Install]
            WantedBy=timers.target
    - mode: '0644'

{{ unit_enabled('appliance-tlsrpt-timer', 'appliance-tlsrpt.timer', appliance.booted, require=['file: appliance-tlsrpt-units']) }}
