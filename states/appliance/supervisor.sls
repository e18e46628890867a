# supervisor and its programs. systemd's appliance.service runs
# `appliance up --foreground`, which renders RUN_DIR/supervisord.conf from the
# catalog (appliance/catalog.py: only built services get a program) and execs
# supervisord as the service user. Salt 3008 has no supervisord state module:
# the programs are checked and started with supervisorctl in a cmd state.
# In a chroot (image build) nothing is started, the unit is only enabled.
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}
{%- set run_dir = appliance.config.paths.run_dir %}
{%- set ctl = appliance.venv ~ '/bin/supervisorctl -c ' ~ run_dir ~ '/supervisord.conf' %}

appliance-unit:
  file.managed:
    - name: /etc/systemd/system/appliance.service
    - source: salt://appliance/files/appliance.service.jinja
    - template: jinja
    - mode: '0644'
    - context:
        user: {{ appliance.user }}
        group: {{ appliance.group }}
        venv: {{ appliance.venv }}
        config_file: {{ appliance.config_file }}
        runtime_directory: {{ run_dir[5:] }}
        ctl: {{ ctl }}

{{ unit_enabled('appliance-service-enabled', 'appliance.service', appliance.booted, require=['file: appliance-unit', 'file: appliance-config']) }}

{%- if appliance.start_services %}
appliance-service:
  service.running:
    - name: appliance.service
    - enable: True
    - watch:
      - file: appliance-unit
      - file: appliance-config
      - cmd: appliance-venv-install
      - file: appliance-tls-selfsigned-files
      - cmd: appliance-tls-selfsigned          # a new certificate (the box's names changed)
      - file: appliance-dkim-key

# Every program supervisor knows is RUNNING; start those that are not
# (e.g. FATAL after too many quick restarts). No change when all run.
appliance-programs-running:
  cmd.run:
    - name: |
        for i in $(seq 1 60); do {{ ctl }} pid >/dev/null 2>&1 && break; sleep 0.5; done
        {{ ctl }} start all
        sleep 3
        {{ ctl }} status
    - unless: {{ ctl }} status
    - runas: {{ appliance.user }}
    - require:
      - service: appliance-service
{%- endif %}
