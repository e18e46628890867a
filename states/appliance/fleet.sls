# Salt with a master (docs/fleet.md "Salt master and a 3-box layout"), besides the
# masterless salt-call of install.sh (which keeps PREFIX/salt/etc/minion untouched):
# - appliance:fleet:master set: this box is a minion of that master, with its own
#   config dir PREFIX/salt/etc-fleet (minion file, keys in pki/minion) and the unit
#   appliance-salt-minion.service;
# - appliance:fleet:serve true: this box runs the salt-master
#   (appliance-salt-master.service), serving PREFIX/src/states (the formula staged by
#   install.sh) with the per-minion pillar tree in appliance:fleet:pillar_dir
#   (top.sls maps minion ids to pillar files: states/fleet-pillar/ is an example).
# The minion id: appliance:fleet:minion_id, else an `id:` line in
# PREFIX/salt/etc-fleet/minion.d/*.conf (Salt's default_include), else the host name.
# Keys are never auto-accepted: `salt-key --config-dir=PREFIX/salt/etc-fleet -a ID`.
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}
{%- set f = appliance.fleet %}
{%- set salt_dir = appliance.prefix ~ '/salt' %}
{%- set conf = salt_dir ~ '/etc-fleet' %}
{%- macro fail(key, value, reason) %}{{ raise('pillar appliance:' ~ key ~ ': value ' ~ (value | string)[:80] ~ ': ' ~ reason) }}{% endmacro %}
{%- if f.master is not string %}{{ fail('fleet:master', f.master, 'must be the master host name or address (empty: no master)') }}{% endif %}
{%- if f.master and not (f.master | ipaddr) and not (f.master | regex_match('([a-zA-Z0-9-]+\\.)*[a-zA-Z0-9-]+$')) %}{{ fail('fleet:master', f.master, 'not a host name or IP address') }}{% endif %}
{%- if f.minion_id is not string or (f.minion_id and not (f.minion_id | regex_match('[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'))) %}{{ fail('fleet:minion_id', f.minion_id, 'must be empty (the host name) or letters, digits, . _ -') }}{% endif %}
{%- if f.serve not in [true, false] %}{{ fail('fleet:serve', f.serve, 'must be true or false') }}{% endif %}
{%- if f.interface is not string or not (f.interface | ipaddr) %}{{ fail('fleet:interface', f.interface, 'not an IP address') }}{% endif %}
{%- if f.pillar_dir is not string or not f.pillar_dir.startswith('/') %}{{ fail('fleet:pillar_dir', f.pillar_dir, 'must be an absolute path') }}{% endif %}

{%- if f.master or f.serve %}
appliance-fleet-salt-dir:
  file.directory:
    - name: {{ conf }}
    - mode: '0700'
{%- endif %}

{%- if f.master %}
appliance-fleet-minion-config:
  file.managed:
    - name: {{ conf }}/minion
    - mode: '0600'
    - contents: |
        # Managed by Salt (states/appliance/fleet.sls): this box as a minion of {{ f.master }}.
        master: {{ f.master }}
{%-   if f.minion_id %}
        id: {{ f.minion_id }}
{%-   endif %}
        root_dir: /
        pki_dir: {{ conf }}/pki/minion
        cachedir: /var/cache/appliance-salt-fleet/minion
        sock_dir: /run/appliance-salt-fleet/minion
        log_file: /var/log/appliance-salt-minion.log
        log_level_logfile: info
        # systemd units through systemctl, as install.sh's masterless config does.
        providers:
          service: systemd_service
        state_verbose: False
    - require:
      - file: appliance-fleet-salt-dir

appliance-fleet-minion-unit:
  file.managed:
    - name: /etc/systemd/system/appliance-salt-minion.service
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/fleet.sls).
        [Unit]
        Description=ISP Mail Appliance: Salt minion of {{ f.master }}
        After=network-online.target
        Wants=network-online.target
        [Service]
        ExecStart={{ salt_dir }}/bin/salt-minion --config-dir={{ conf }}
        KillMode=process
        Restart=on-failure
        RestartSec=5
        [Install]
        WantedBy=multi-user.target

{{ unit_enabled('appliance-fleet-minion-enabled', 'appliance-salt-minion.service', appliance.booted, require=['file: appliance-fleet-minion-unit', 'file: appliance-fleet-minion-config']) }}

{%-   if appliance.start_services %}
# No watch: a highstate through the master runs inside this minion; restarting it
# would end the run. A changed minion config applies at its next start.
appliance-fleet-minion-running:
  service.running:
    - name: appliance-salt-minion.service
    - require:
      - file: appliance-fleet-minion-config
{%-   endif %}
{%- endif %}

{%- if f.serve %}
appliance-fleet-pillar-dir:
  file.directory:
    - name: {{ f.pillar_dir }}
    - mode: '0700'
    - makedirs: True

appliance-fleet-master-config:
  file.managed:
    - name: {{ conf }}/master
    - mode: '0600'
    - contents: |
        # Managed by Salt (states/appliance/fleet.sls): the fleet's salt-master.
        interface: {{ f.interface }}
        root_dir: /
        pki_dir: {{ conf }}/pki/master
        cachedir: /var/cache/appliance-salt-fleet/master
        sock_dir: /run/appliance-salt-fleet/master
        log_file: /var/log/appliance-salt-master.log
        log_level_logfile: info
        auto_accept: False
        file_roots:
          base:
            - {{ appliance.src }}/states
        pillar_roots:
          base:
            - {{ f.pillar_dir }}
    - require:
      - file: appliance-fleet-salt-dir

appliance-fleet-master-unit:
  file.managed:
    - name: /etc/systemd/system/appliance-salt-master.service
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/fleet.sls).
        [Unit]
        Description=ISP Mail Appliance: the fleet's salt-master
        After=network-online.target
        [Service]
        ExecStart={{ salt_dir }}/bin/salt-master --config-dir={{ conf }}
        LimitNOFILE=16384
        Restart=on-failure
        RestartSec=5
        [Install]
        WantedBy=multi-user.target

{{ unit_enabled('appliance-fleet-master-enabled', 'appliance-salt-master.service', appliance.booted, require=['file: appliance-fleet-master-unit', 'file: appliance-fleet-master-config']) }}

{%-   if appliance.start_services %}
appliance-fleet-master-running:
  service.running:
    - name: appliance-salt-master.service
    - watch:
      - file: appliance-fleet-master-config
      - file: appliance-fleet-master-unit
{%-   endif %}
{%- endif %}
