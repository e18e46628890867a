# The DKIM signing key: generated once on the box (or imported from pillar
# appliance:dkim:key_pem), readable by the service user; the DNS TXT record to
# publish is written next to it (SELECTOR.txt) for the operator.
{%- from "appliance/map.jinja" import appliance with context %}
{%- set py = appliance.venv ~ '/bin/python' %}

appliance-dkim-dir:
  file.directory:
    - name: {{ appliance.etc_dir }}/dkim
    - user: root
    - group: {{ appliance.group }}
    - mode: '0750'
    - require:
      - file: appliance-etc-dir

{%- if appliance.dkim.key_pem %}
appliance-dkim-key:
  file.managed:
    - name: {{ appliance.dkim_key }}
    - contents_pillar: appliance:dkim:key_pem
    - user: root
    - group: {{ appliance.group }}
    - mode: '0640'
    - show_changes: False
    - require:
      - file: appliance-dkim-dir
{%- else %}
appliance-dkim-generate:
  cmd.run:
    - name: {{ py }} -c 'import sys; from pathlib import Path; from appliance.tlsfiles import make_dkim_key; make_dkim_key(Path(sys.argv[1]), int(sys.argv[2]))' {{ appliance.dkim_key }} {{ appliance.dkim.bits }}
    - creates: {{ appliance.dkim_key }}
    - require:
      - file: appliance-dkim-dir
      - cmd: appliance-venv-install

appliance-dkim-key:
  file.managed:
    - name: {{ appliance.dkim_key }}
    - replace: False          # only ownership and mode; the key itself was generated above
    - user: root
    - group: {{ appliance.group }}
    - mode: '0640'
    - require:
      - cmd: appliance-dkim-generate
{%- endif %}

appliance-dkim-txt:
  file.managed:
    - name: {{ appliance.dkim_txt }}
    - source: salt://appliance/files/dkim-txt.jinja
    - template: jinja
    - context:
        py: {{ py }}
        key: {{ appliance.dkim_key }}
        selector: {{ appliance.config.dkim.selector }}
    - mode: '0644'
    - require:
      - file: appliance-dkim-key
