# /etc/appliance/appliance.toml from pillar appliance:config (plus the TLS and
# DKIM paths the formula decides). The new content is checked with
# appliance.config before it replaces the file (check_cmd), so a bad render can
# never replace a working config.
{%- from "appliance/map.jinja" import appliance with context %}

{%- if appliance.registry.root_json %}
appliance-registry-root:
  file.managed:
    - name: {{ appliance.registry_root }}
    - contents_pillar: appliance:registry:root_json
    - user: root
    - group: {{ appliance.group }}
    - mode: '0640'
    - require:
      - file: appliance-etc-dir
    - require_in:
      - file: appliance-config
{%- endif %}

{%- if appliance.upstream.password %}
appliance-upstream-password:
  file.managed:
    - name: {{ appliance.upstream_password_file }}
    - contents_pillar: appliance:upstream:password
    - user: {{ appliance.user }}
    - group: {{ appliance.group }}
    - mode: '0600'
    - makedirs: True
    - show_changes: False
    - require:
      - user: appliance-user
    - require_in:
      - file: appliance-config
{%- endif %}

appliance-config:
  file.managed:
    - name: {{ appliance.config_file }}
    - source: salt://appliance/files/appliance.toml.jinja
    - template: jinja
    - user: root
    - group: {{ appliance.group }}
    - mode: '0640'
    - check_cmd: {{ appliance.venv }}/bin/python -m appliance.config --check
    - require:
      - file: appliance-pillar-valid
      - file: appliance-tls-selfsigned-files
      - file: appliance-dkim-key
