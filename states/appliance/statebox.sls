# The fleet's shared state store on a "state" box: Debian's redis-server (the shared
# limiter, [state] redis_url) and/or postgresql 15 (the shared accounts,
# [state] postgres_url), only when the pillar lists them in appliance:state_services.
# A mail box lists none and this file does nothing there. docs/fleet.md
# "Salt master and a 3-box layout".
# Built: install, listen address, enabled and running. Not built here: Redis ACLs or
# requirepass, PostgreSQL roles, databases and pg_hba.conf rules for the mail boxes
# (the operator creates them; `appliance db migrate` then makes the schema).
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}
{%- set wanted = appliance.state_services %}
{%- set sb = appliance.statebox %}
{%- macro fail(key, value, reason) %}{{ raise('pillar appliance:' ~ key ~ ': value ' ~ (value | string)[:80] ~ ': ' ~ reason) }}{% endmacro %}
{%- if wanted is string or wanted is not iterable %}{{ fail('state_services', wanted, 'must be a list (of redis, postgresql)') }}{% endif %}
{%- for s in wanted %}{% if s not in ['redis', 'postgresql'] %}{{ fail('state_services', s, 'unknown: must be redis or postgresql') }}{% endif %}{% endfor %}
{%- for a in sb.redis.bind %}{% if a is not string or not (a | ipaddr) %}{{ fail('statebox:redis:bind', a, 'not an IP address') }}{% endif %}{% endfor %}
{%- if sb.redis.bind is string or not sb.redis.bind %}{{ fail('statebox:redis:bind', sb.redis.bind, 'must be a non-empty list of IP addresses') }}{% endif %}
{%- for a in sb.postgresql.listen %}{% if a is not string or not (a == 'localhost' or (a | ipaddr)) %}{{ fail('statebox:postgresql:listen', a, 'not an IP address or localhost') }}{% endif %}{% endfor %}
{%- if sb.postgresql.listen is string or not sb.postgresql.listen %}{{ fail('statebox:postgresql:listen', sb.postgresql.listen, 'must be a non-empty list of addresses') }}{% endif %}

{%- if 'redis' in wanted %}
appliance-statebox-redis-package:
  pkg.installed:
    - pkgs:
      - redis-server
    - refresh: False
    - install_recommends: False

# Debian's /etc/redis/redis.conf keeps protected-mode on: a non-loopback bind
# then still refuses clients until a password or ACL is set (not managed here).
appliance-statebox-redis-bind:
  file.replace:
    - name: /etc/redis/redis.conf
    - pattern: '^bind .*$'
    - repl: 'bind {{ sb.redis.bind | join(" ") }}'
    - append_if_not_found: True
    - require:
      - pkg: appliance-statebox-redis-package

{{ unit_enabled('appliance-statebox-redis-enabled', 'redis-server.service', appliance.booted, require=['pkg: appliance-statebox-redis-package']) }}

{%-   if appliance.start_services %}
appliance-statebox-redis-running:
  service.running:
    - name: redis-server.service
    - watch:
      - file: appliance-statebox-redis-bind
{%-   endif %}
{%- endif %}

{%- if 'postgresql' in wanted %}
appliance-statebox-postgresql-package:
  pkg.installed:
    - pkgs:
      - postgresql
    - refresh: False
    - install_recommends: False

# Debian's postgresql.conf includes conf.d/ (include_dir = 'conf.d').
appliance-statebox-postgresql-listen:
  file.managed:
    - name: /etc/postgresql/{{ sb.postgresql.version }}/main/conf.d/appliance.conf
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/statebox.sls).
        listen_addresses = '{{ sb.postgresql.listen | join(",") }}'
    - require:
      - pkg: appliance-statebox-postgresql-package

{{ unit_enabled('appliance-statebox-postgresql-enabled', 'postgresql.service', appliance.booted, require=['pkg: appliance-statebox-postgresql-package']) }}

{%-   if appliance.start_services %}
appliance-statebox-postgresql-running:
  service.running:
    - name: postgresql.service
    - watch:
      - file: appliance-statebox-postgresql-listen
{%-   endif %}
{%- endif %}
