# Stop early on a bad pillar: render appliance:config to TOML exactly as
# config.sls will, and validate it with appliance.config (the one schema the
# services use). Nothing that depends on the config runs before this, and
# failhard stops the whole run with the key named, e.g.
#   pillar appliance:config: key box.hostname: value 'x y': not a valid domain name
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/files/toml.jinja" import toml with context %}
{%- set rendered = toml(appliance.config) %}
{%- set check = appliance.libexec ~ '/check-pillar ' ~ (rendered | base64_encode) %}

appliance-check-pillar-script:
  file.managed:
    - name: {{ appliance.libexec }}/check-pillar
    - source: salt://appliance/files/check-pillar.py
    - mode: '0755'
    - template: jinja
    - context:
        venv: {{ appliance.venv }}
    - require:
      - file: appliance-libexec

appliance-pillar-valid:
  cmd.run:
    # Runs (and fails, printing the reason) only when the check does not pass.
    - name: {{ check }}
    - unless: {{ check }}
    - failhard: True
    - require:
      - cmd: appliance-venv-install
      - file: appliance-check-pillar-script
