# Stop early on a bad pillar: render appliance:config to TOML exactly as
# config.sls will (with the formula's TLS and DKIM paths) and validate it with
# appliance.config, the one schema the services use, before anything that
# depends on it runs. failhard ends the whole run there, with the key named:
#   pillar appliance:config: key box.hostname: value 'x y': not a fully qualified domain name
# The checked copy is kept (PREFIX/pillar/appliance.toml.checked), so a second
# apply with the same pillar changes nothing.
{%- from "appliance/map.jinja" import appliance with context %}
{%- set pillar_appliance = salt['pillar.get']('appliance', {}) %}

{#- The formula's own keys, checked when this file renders: a bad value stops
    the run before any state executes (one line naming the key). #}
{%- macro fail(key, value, reason) %}{{ raise('pillar appliance:' ~ key ~ ': value ' ~ (value | string)[:80] ~ ': ' ~ reason) }}{% endmacro %}
{%- set pc = pillar_appliance.get('config', {}) %}
{%- if pc is not mapping %}{{ fail('config', pc, 'must be a mapping of appliance.toml keys') }}{% endif %}
{%- if 'tls' in pc %}{{ fail('config:tls', pc.tls, 'set by the formula: use appliance:tls:mode (self-signed or certbot)') }}{% endif %}
{%- if pc.get('dkim', {}) is mapping and 'key' in pc.get('dkim', {}) %}{{ fail('config:dkim:key', pc.dkim.key, 'set by the formula: use appliance:dkim:key_pem to import a key') }}{% endif %}
{%- if pc.get('box', {}) is mapping and pc.get('box', {}).get('service_user') %}{{ fail('config:box:service_user', pc.box.service_user, 'must stay empty: systemd runs supervisord as appliance:user') }}{% endif %}
{%- if appliance.tls.mode not in ['self-signed', 'certbot'] %}{{ fail('tls:mode', appliance.tls.mode, 'must be self-signed or certbot') }}{% endif %}
{%- if appliance.tls.names is string or appliance.tls.names is not iterable %}{{ fail('tls:names', appliance.tls.names, 'must be a list of names') }}{% endif %}
{%- if appliance.tls.certbot.method not in ['standalone', 'webroot'] %}{{ fail('tls:certbot:method', appliance.tls.certbot.method, 'must be standalone or webroot') }}{% endif %}
{%- if appliance.tls.certbot.http01_port is not integer or appliance.tls.certbot.http01_port is sameas true or not (0 < appliance.tls.certbot.http01_port < 65536) %}{{ fail('tls:certbot:http01_port', appliance.tls.certbot.http01_port, 'must be a TCP port number') }}{% endif %}
{%- if appliance.wellknown_http_port and appliance.tls.mode == 'certbot' and appliance.tls.certbot.method == 'standalone' and appliance.tls.certbot.http01_port == appliance.wellknown_http_port %}{{ fail('tls:certbot:method', 'standalone', 'certbot standalone would listen on port ' ~ appliance.wellknown_http_port ~ ', which config:listeners:wellknown_http holds: set tls:certbot:method: webroot (the listener then serves the challenges from tls:certbot:webroot)') }}{% endif %}
{%- if appliance.acme_webroot and appliance.acme_webroot_given and appliance.acme_webroot_given != appliance.acme_webroot %}{{ fail('config:listeners:wellknown_http:acme_webroot', appliance.acme_webroot_given, 'must be tls:certbot:webroot (' ~ appliance.acme_webroot ~ '), where certbot writes the challenges; or leave it out (the formula sets it)') }}{% endif %}
{%- if appliance.tls.certbot.no_random_sleep_on_renew not in [true, false] %}{{ fail('tls:certbot:no_random_sleep_on_renew', appliance.tls.certbot.no_random_sleep_on_renew, 'must be true or false') }}{% endif %}
{%- if appliance.service.start not in ['auto', true, false] %}{{ fail('service:start', appliance.service.start, 'must be auto, true or false') }}{% endif %}
{%- if appliance.firewall.enabled not in [true, false] %}{{ fail('firewall:enabled', appliance.firewall.enabled, 'must be true or false') }}{% endif %}
{%- for key in ['public_tcp', 'extra_tcp'] %}
{%-   set ports = appliance.firewall[key] %}
{%-   if ports is string or ports is not iterable %}{{ fail('firewall:' ~ key, ports, 'must be a list of TCP ports') }}{% endif %}
{%-   for p in ports %}{% if p is not integer or p is sameas true or not (0 < p < 65536) %}{{ fail('firewall:' ~ key, p, 'not a TCP port number') }}{% endif %}{% endfor %}
{%- endfor %}
{%- if appliance.firewall.ssh_port is not integer or not (0 < appliance.firewall.ssh_port < 65536) %}{{ fail('firewall:ssh_port', appliance.firewall.ssh_port, 'must be a TCP port number') }}{% endif %}
{%- for key in ['ssh_sources', 'mx_static_sources'] %}
{%-   set nets = appliance.firewall[key] %}
{%-   if nets is string or nets is not iterable %}{{ fail('firewall:' ~ key, nets, 'must be a list of addresses or CIDRs') }}{% endif %}
{%-   for n in nets %}{% if n is not string or not (n | ipaddr) %}{{ fail('firewall:' ~ key, n, 'not an IP address or CIDR') }}{% endif %}{% endfor %}
{%- endfor %}
{%- if appliance.ssh.admin_user is not string or not (appliance.ssh.admin_user | regex_match('([a-z_][a-z0-9_-]{0,31})$')) or appliance.ssh.admin_user in ['root', 'vagrant', appliance.user] %}{{ fail('ssh:admin_user', appliance.ssh.admin_user, 'must be a new login name (not root, vagrant or the service user)') }}{% endif %}
{%- if appliance.ssh.authorized_keys is string or appliance.ssh.authorized_keys is not iterable %}{{ fail('ssh:authorized_keys', appliance.ssh.authorized_keys, 'must be a list of OpenSSH public key lines') }}{% endif %}
{%- for k in appliance.ssh.authorized_keys %}{% if k is not string or '\n' in k or not (k | regex_match('((ssh|ecdsa|sk-ssh|sk-ecdsa)-[a-z0-9@.-]+) [A-Za-z0-9+/=]+( .*)?$')) %}{{ fail('ssh:authorized_keys', k, 'not an OpenSSH public key line') }}{% endif %}{% endfor %}
{%- if appliance.logrotate.days is not integer or appliance.logrotate.days < 1 %}{{ fail('logrotate:days', appliance.logrotate.days, 'must be a positive integer') }}{% endif %}
{%- if not (appliance.config.paths.run_dir | string).startswith('/run/') %}{{ fail('config:paths:run_dir', appliance.config.paths.run_dir, 'must be under /run/ (systemd RuntimeDirectory)') }}{% endif %}

{%- if appliance.upstream.password and not appliance.upstream_password_file %}{{ fail('upstream:password', '(hidden)', 'needs config:relay:upstream:password_file') }}{% endif %}

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
  file.managed:
    - name: {{ appliance.prefix }}/pillar/appliance.toml.checked
    - source: salt://appliance/files/pillar-config.toml.jinja
    - template: jinja
    - makedirs: True
    - mode: '0600'
    # Runs on the new content before it is written; exit 2 names the key.
    - check_cmd: {{ appliance.libexec }}/check-pillar
    - failhard: True
    - require:
      - cmd: appliance-venv-install
      - file: appliance-check-pillar-script
