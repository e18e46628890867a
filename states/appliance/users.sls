# The system user the services run as. supervisord runs as this user too
# (systemd grants it CAP_NET_BIND_SERVICE for ports below 1024), so nothing of
# the mail path runs as root.
{%- from "appliance/map.jinja" import appliance with context %}

appliance-group:
  group.present:
    - name: {{ appliance.group }}
    - system: True

appliance-user:
  user.present:
    - name: {{ appliance.user }}
    - gid: {{ appliance.group }}
    - system: True
    - home: {{ appliance.config.paths.state_dir }}
    - createhome: False
    # nologin, unless this box takes `user move --ssh` (fleet:move:authorized_keys, move.sls):
    # sshd runs even a forced command (the keys' rrsync) through the login shell, `SHELL -c
    # COMMAND`, and nologin refuses that. /bin/sh then runs only the forced command: every key
    # of the user is restricted to it and there is no password.
    - shell: {{ '/bin/sh' if appliance.move_keys else '/usr/sbin/nologin' }}
    - fullname: ISP Mail Appliance
    - require:
      - group: appliance-group

{#- Directories the services write; created here because supervisord, as the
    service user, cannot create them under /var itself. #}
{%- for key, mode in [('state_dir', '0750'), ('spool_dir', '0750'), ('mail_dir', '0700'), ('log_dir', '0750')] %}
appliance-dir-{{ key }}:
  file.directory:
    - name: {{ appliance.config.paths[key] }}
    - user: {{ appliance.user }}
    - group: {{ appliance.group }}
    - mode: '{{ mode }}'
    - makedirs: True
    - require:
      - user: appliance-user
{%- endfor %}

appliance-etc-dir:
  file.directory:
    - name: {{ appliance.etc_dir }}
    - user: root
    - group: {{ appliance.group }}
    - mode: '0750'
    - require:
      - group: appliance-group
