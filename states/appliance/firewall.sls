# nftables: port 25 only from consortium members (the named sets consortium_v4 /
# consortium_v6, filled from the verified registry by appliance-firewall-sync),
# customer ports (587 465 993 995 143 110) open, SSH, ACME HTTP-01 when certbot
# runs standalone, the well-known names' HTTPS port (listeners.wellknown) and
# plain-HTTP port (listeners.wellknown_http) while each is on, everything else dropped.
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}
{%- set fw = appliance.firewall %}
{%- set sync = '/usr/local/sbin/appliance-firewall-sync' %}
{%- if fw.enabled %}
{%- set open_tcp = fw.public_tcp + fw.extra_tcp %}
{%- if appliance.tls.mode == 'certbot' and appliance.tls.certbot.method == 'standalone' %}
{%-   do open_tcp.append(appliance.tls.certbot.http01_port) %}
{%- endif %}
{%- if appliance.wellknown_port %}
{%-   do open_tcp.append(appliance.wellknown_port) %}{# listeners.wellknown, only while it is on #}
{%- endif %}
{%- if appliance.wellknown_http_port %}
{%-   do open_tcp.append(appliance.wellknown_http_port) %}{# listeners.wellknown_http (port 80), only while it is on #}
{%- endif %}
{%- set registry_json = (appliance.config.registry.dir if appliance.config.get('registry', {}).get('dir') else appliance.config.paths.state_dir ~ '/registry') ~ '/registry.json' %}

appliance-nftables-conf:
  file.managed:
    - name: /etc/nftables.conf
    - source: salt://appliance/files/nftables.conf.jinja
    - template: jinja
    - mode: '0755'
    - context:
        open_tcp: {{ open_tcp | unique | sort | list | json }}
        ssh_port: {{ fw.ssh_port }}
        ssh_v4: {{ fw.ssh_sources | map('ipv4') | select | list | json }}
        ssh_v6: {{ fw.ssh_sources | map('ipv6') | select | list | json }}
        mx_v4: {{ fw.mx_static_sources | map('ipv4') | select | list | json }}
        mx_v6: {{ fw.mx_static_sources | map('ipv6') | select | list | json }}
    - check_cmd: /usr/sbin/nft -c -f
    - require:
      - pkg: appliance-packages

appliance-firewall-sync-script:
  file.managed:
    - name: {{ sync }}
    - source: salt://appliance/files/firewall-sync.py
    - template: jinja
    - mode: '0755'
    - context:
        venv: {{ appliance.venv }}
        config_file: {{ appliance.config_file }}

# nftables (re)loads flush the sets: refill them right after.
appliance-nftables-dropin:
  file.managed:
    - name: /etc/systemd/system/nftables.service.d/appliance.conf
    - makedirs: True
    - contents: |
        # Managed by Salt (states/appliance/firewall.sls).
        [Service]
        ExecStartPost=-{{ sync }}
        ExecReload=-{{ sync }}

appliance-firewall-units:
  file.managed:
    - names:
      - /etc/systemd/system/appliance-firewall-sync.service:
        - contents: |
            # Managed by Salt (states/appliance/firewall.sls).
            [Unit]
            Description=Allow SMTP (port 25) from the consortium members in the verified registry
            After=nftables.service
            Wants=nftables.service

            [Service]
            Type=oneshot
            ExecStart={{ sync }}

            [Install]
            WantedBy=multi-user.target
      - /etc/systemd/system/appliance-firewall-sync.path:
        - contents: |
            # Managed by Salt (states/appliance/firewall.sls).
            [Unit]
            Description=Refill the members' SMTP sets whenever the registry agent installs a new registry

            [Path]
            PathChanged={{ registry_json }}

            [Install]
            WantedBy=paths.target
    - mode: '0644'

{%- for unit in ['nftables.service', 'appliance-firewall-sync.service', 'appliance-firewall-sync.path'] %}
{{ unit_enabled('appliance-enable-' ~ unit, unit, appliance.booted, require=['file: appliance-firewall-units', 'file: appliance-nftables-conf', 'file: appliance-nftables-dropin']) }}
{%- endfor %}

{%- if appliance.start_services %}
appliance-nftables-running:
  service.running:
    - name: nftables.service
    - reload: True
    - watch:
      - file: appliance-nftables-conf
      - file: appliance-nftables-dropin
      - file: appliance-firewall-sync-script

appliance-firewall-sync-path-running:
  service.running:
    - name: appliance-firewall-sync.path
    - require:
      - service: appliance-nftables-running
{%- endif %}
{%- else %}
{{ unit_enabled('appliance-nftables-disabled', 'nftables.service', appliance.booted, enable=False) }}
{%- endif %}
