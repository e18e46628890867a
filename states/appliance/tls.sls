# TLS: a self-signed certificate for the box's names, always present as the
# fallback (no public name yet, or ACME failed). With tls:mode certbot,
# certbot.sls obtains a real one; config.sls points the services at whichever
# is in place and `appliance status` shows which (tls.source).
{%- from "appliance/map.jinja" import appliance with context %}
{%- set ss = appliance.selfsigned %}

appliance-tls-dir:
  file.directory:
    - names:
      - {{ appliance.etc_dir }}/tls
      - {{ appliance.etc_dir }}/tls/selfsigned
      - {{ appliance.etc_dir }}/tls/certbot
    - user: root
    - group: {{ appliance.group }}
    - mode: '0750'
    - require:
      - file: appliance-etc-dir

appliance-tls-names-check:
  file.managed:
    - name: {{ appliance.libexec }}/tls-names-match
    - source: salt://appliance/files/tls-names-match.py
    - mode: '0755'
    - template: jinja
    - context:
        venv: {{ appliance.venv }}
    - require:
      - file: appliance-libexec

# Issued when missing, and again when it does not name exactly this box's names (CN
# box.hostname, SAN every tls_names entry): a box from the image has the image's
# certificate (mx.example.test, made on first boot) until its pillar names the box.
appliance-tls-selfsigned:
  cmd.run:
    - name: {{ appliance.venv }}/bin/python -c 'import sys; from pathlib import Path; from appliance.tlsfiles import make_self_signed; make_self_signed(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])' {{ ss.cert }} {{ ss.key }} {{ appliance.tls_names | join(' ') }}
    - unless: test -s {{ ss.key }} && {{ appliance.libexec }}/tls-names-match {{ ss.cert }} {{ appliance.tls_names | join(' ') }}
    - require:
      - file: appliance-tls-dir
      - file: appliance-tls-names-check
      - cmd: appliance-venv-install

appliance-tls-selfsigned-files:
  file.managed:
    - names:
      - {{ ss.cert }}:
        - mode: '0644'
      - {{ ss.key }}:
        - mode: '0640'
    - replace: False            # ownership and mode only
    - user: root
    - group: {{ appliance.group }}
    - require:
      - cmd: appliance-tls-selfsigned
