# Log rotation. supervisor already caps each service log by size
# (RUN_DIR/supervisord.conf: 20 MB x 5); logrotate adds retention by age with
# dated, compressed copies (dateext, so its names never collide with
# supervisor's NAME.log.1..5). copytruncate: supervisord keeps the file open.
# The journal (appliance.service, certbot, firewall sync) is capped too.
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}

appliance-logrotate:
  file.managed:
    - name: /etc/logrotate.d/appliance
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/logrotate.sls).
        {{ appliance.config.paths.log_dir }}/*.log {
            daily
            rotate {{ appliance.logrotate.days }}
            dateext
            compress
            delaycompress
            missingok
            notifempty
            copytruncate
            su {{ appliance.user }} {{ appliance.group }}
        }
    - require:
      - pkg: appliance-packages

appliance-journald:
  file.managed:
    - name: /etc/systemd/journald.conf.d/appliance.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/logrotate.sls).
        [Journal]
        SystemMaxUse=500M
        MaxRetentionSec={{ appliance.logrotate.days }}day

{{ unit_enabled('appliance-logrotate-timer', 'logrotate.timer', appliance.booted, require=['pkg: appliance-packages']) }}
