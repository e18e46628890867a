# This box as the target of `appliance user move --ssh` (docs/fleet.md "Between machines"):
# the moving boxes' keys (pillar appliance:fleet:move:authorized_keys, checked in map.jinja)
# log in as the service user and may only run rrsync rooted at config:paths:mail_dir, so what
# arrives is owned by the user the access service reads as. The service user's shell follows
# the same pillar (users.sls: /bin/sh with keys, else /usr/sbin/nologin). SSH's port is
# already open in firewall.sls (firewall:ssh_port, from firewall:ssh_sources).
# No keys: the service user has no authorized_keys (one this state wrote is removed, so taking
# a key out of the pillar revokes it) and keeps nologin.
{%- from "appliance/map.jinja" import appliance with context %}
{%- set home = appliance.config.paths.state_dir %}{# the service user's home (users.sls) #}
{%- set keys_file = home ~ '/.ssh/authorized_keys' %}

{%- if appliance.move_keys %}
appliance-move-packages:
  pkg.installed:
    - pkgs:
      - openssh-server
      - rsync               # ships /usr/bin/rrsync (Debian 12)
    - refresh: False        # install.sh runs apt-get update once before Salt
    - install_recommends: False

appliance-move-ssh-dir:
  file.directory:
    - name: {{ home }}/.ssh
    - user: {{ appliance.user }}
    - group: {{ appliance.group }}
    - mode: '0700'
    - require:
      - file: appliance-dir-state_dir

# restrict: no port, agent or X11 forwarding, no pty; rrsync refuses anything but rsync's
# server side and any path outside the mail directory. Not -wo: the move lists the target first.
appliance-move-authorized-keys:
  file.managed:
    - name: {{ keys_file }}
    - user: {{ appliance.user }}
    - group: {{ appliance.group }}
    - mode: '0600'
    - contents: |
        # Managed by Salt (pillar appliance:fleet:move:authorized_keys); other keys are removed.
        {%- for key in appliance.move_keys %}
        command="/usr/bin/rrsync {{ appliance.config.paths.mail_dir }}",restrict {{ key }}
        {%- endfor %}
    - require:
      - file: appliance-move-ssh-dir
      - pkg: appliance-move-packages
      - user: appliance-user
{%- else %}
appliance-move-no-keys:
  file.absent:
    - name: {{ keys_file }}
{%- endif %}
