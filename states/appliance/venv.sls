# The appliance in its own venv of Debian's /usr/bin/python3, installed from the
# wheel that install.sh (or states/apply.sh) built from the checkout and staged
# in PREFIX/src/dist/, with every dependency pinned by the staged constraints.txt.
# A stamp of both files' hashes makes the install idempotent: same wheel, same
# pins -> nothing to do; anything different -> reinstall.
{%- from "appliance/map.jinja" import appliance with context %}
{%- set venv = appliance.venv %}
{%- set src = appliance.src %}

appliance-venv:
  cmd.run:
    - name: /usr/bin/python3 -m venv {{ venv }}
    - creates: {{ venv }}/bin/python
    - require:
      - pkg: appliance-packages

appliance-venv-install:
  cmd.run:
    - name: |
        set -e
        ls {{ src }}/dist/*.whl >/dev/null
        {{ venv }}/bin/pip install --disable-pip-version-check -q -c {{ src }}/constraints.txt {{ src }}/dist/*.whl
        # Same version, new build: replace the package itself, keep the pinned dependencies.
        {{ venv }}/bin/pip install --disable-pip-version-check -q --no-deps --force-reinstall {{ src }}/dist/*.whl
        sha256sum {{ src }}/dist/*.whl {{ src }}/constraints.txt > {{ venv }}/.installed-from
    - unless: cd / && sha256sum --status -c {{ venv }}/.installed-from
    - require:
      - cmd: appliance-venv

# `appliance ...` for the operator: runs as the service user, so accounts and
# Maildirs it creates stay usable by the services.
appliance-cli:
  file.managed:
    - name: /usr/local/bin/appliance
    - mode: '0755'
    - contents: |
        #!/bin/sh
        # Managed by Salt (states/appliance/venv.sls).
        export APPLIANCE_CONFIG="${APPLIANCE_CONFIG:-{{ appliance.config_file }}}"
        if [ "$(id -u)" = 0 ]; then
          exec runuser -u {{ appliance.user }} -- {{ venv }}/bin/appliance "$@"
        fi
        exec {{ venv }}/bin/appliance "$@"

appliance-libexec:
  file.directory:
    - name: {{ appliance.libexec }}
    - mode: '0755'
