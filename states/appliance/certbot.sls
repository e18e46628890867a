# ACME certificates with certbot (tls:mode certbot): HTTP-01, standalone (certbot
# listens on tls:certbot:http01_port, opened in the firewall) or webroot (served by
# listeners.wellknown_http from tls:certbot:webroot; standalone on its port is refused). The
# deploy hook copies the certificate where the service user can read it and
# restarts the services; it runs on the first issuance and on every renewal.
# If ACME fails this state fails and the box keeps serving the self-signed
# certificate (config.sls only switches once the copy exists).
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}
{%- set cb = appliance.tls.certbot %}
{%- set hook = appliance.libexec ~ '/certbot-deploy-hook' %}
{%- set live = '/etc/letsencrypt/live/' ~ appliance.hostname %}

appliance-certbot-deploy-hook:
  file.managed:
    - name: {{ hook }}
    - source: salt://appliance/files/certbot-deploy-hook.sh
    - mode: '0755'
    - require:
      - file: appliance-libexec

appliance-certbot-hook-env:
  file.managed:
    - name: {{ appliance.etc_dir }}/certbot-hook.env
    - source: salt://appliance/files/certbot-hook.env.jinja
    - template: jinja
    - mode: '0644'
    - context:
        config_file: {{ appliance.config_file }}
        dest: {{ appliance.etc_dir }}/tls/certbot
        group: {{ appliance.group }}
        venv: {{ appliance.venv }}
    - require:
      - file: appliance-etc-dir

# Renewal: Debian's certbot.timer runs certbot.service; this drop-in sets our
# options (and our schedule) without replacing the packaged units.
appliance-certbot-renew-dropin:
  file.managed:
    - name: /etc/systemd/system/certbot.service.d/appliance.conf
    - makedirs: True
    - contents: |
        # Managed by Salt (states/appliance/certbot.sls).
        [Service]
        {%- if cb.ca_bundle %}
        Environment=REQUESTS_CA_BUNDLE={{ cb.ca_bundle }}
        {%- endif %}
        ExecStart=
        ExecStart=/usr/bin/certbot -q renew{{ ' --no-random-sleep-on-renew' if cb.no_random_sleep_on_renew else '' }}

appliance-certbot-timer-dropin:
  file.managed:
    - name: /etc/systemd/system/certbot.timer.d/appliance.conf
    - makedirs: True
    - contents: |
        # Managed by Salt (states/appliance/certbot.sls).
        [Timer]
        OnCalendar=
        OnCalendar={{ cb.renew_schedule }}

{%- if appliance.tls.mode == 'certbot' %}
{{ unit_enabled('appliance-certbot-timer', 'certbot.timer', appliance.booted, require=['file: appliance-certbot-renew-dropin', 'file: appliance-certbot-timer-dropin']) }}

{%- if cb.method == 'webroot' %}
# certbot writes the HTTP-01 answers here; listeners.wellknown_http (when on) serves them, so the
# service user must be able to read them (certbot's own files are 0644).
appliance-certbot-webroot:
  file.directory:
    - name: {{ cb.webroot }}/.well-known/acme-challenge
    - makedirs: True
    - mode: '0755'
{%- endif %}

appliance-certbot-obtain:
  cmd.run:
    - name: >-
        certbot certonly --non-interactive --agree-tos
        {%- if cb.email %} --email {{ cb.email }}{% else %} --register-unsafely-without-email{% endif %}
        --server {{ cb.server }}
        --cert-name {{ appliance.hostname }}
        {%- for n in appliance.tls_names %} -d {{ n }}{% endfor %}
        {%- if cb.method == 'standalone' %} --standalone --http-01-port {{ cb.http01_port }}{% if cb.http01_address %} --http-01-address {{ cb.http01_address }}{% endif %}
        {%- else %} --webroot -w {{ cb.webroot }}{% endif %}
        --deploy-hook {{ hook }}
    {%- if cb.ca_bundle %}
    - env:
      - REQUESTS_CA_BUNDLE: {{ cb.ca_bundle }}
    {%- endif %}
    - creates: {{ live }}/fullchain.pem
    - require:
      - file: appliance-certbot-deploy-hook
      - file: appliance-certbot-hook-env
      - file: appliance-tls-dir
      - pkg: appliance-packages
      {%- if cb.method == 'webroot' %}
      - file: appliance-certbot-webroot
      {%- endif %}

# A lineage that exists without its copy (e.g. the hook failed once): deploy it now.
appliance-certbot-deploy:
  cmd.run:
    - name: {{ hook }}
    - env:
      - RENEWED_LINEAGE: {{ live }}
    - onlyif: test -s {{ live }}/fullchain.pem
    - creates: {{ appliance.certbot_tls.cert }}
    - require:
      - cmd: appliance-certbot-obtain
{%- else %}
{{ unit_enabled('appliance-certbot-timer', 'certbot.timer', appliance.booted, enable=False) }}
{%- endif %}
