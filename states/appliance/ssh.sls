# SSH: keys only. sshd refuses passwords; the operator's login is ssh:admin_user with the
# public keys of ssh:authorized_keys (pillar), passwordless sudo. No keys in the pillar: no
# admin user, and the box is reached on its console (or, in the Vagrant box, as `vagrant`,
# which image-build/build.sh adds only to the Vagrant profile, never to PROFILE=production).
{%- from "appliance/map.jinja" import appliance with context %}
{%- set ssh = appliance.ssh %}

appliance-sshd-keys-only:
  file.managed:
    - name: /etc/ssh/sshd_config.d/50-appliance.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/ssh.sls): keys only, never passwords.
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PermitRootLogin prohibit-password

{%- if ssh.authorized_keys %}
appliance-admin-user:
  user.present:
    - name: {{ ssh.admin_user }}
    - shell: /bin/bash
    - createhome: True
    - fullname: Appliance operator (SSH keys from pillar)

appliance-admin-authorized-keys:
  file.managed:
    - name: /home/{{ ssh.admin_user }}/.ssh/authorized_keys
    - makedirs: True
    - dir_mode: '0700'
    - mode: '0600'
    - user: {{ ssh.admin_user }}
    - group: {{ ssh.admin_user }}
    - contents: |
        # Managed by Salt (pillar appliance:ssh:authorized_keys); other keys are removed.
        {%- for key in ssh.authorized_keys %}
        {{ key }}
        {%- endfor %}
    - require:
      - user: appliance-admin-user

appliance-admin-sudo:
  file.managed:
    - name: /etc/sudoers.d/appliance-admin
    - makedirs: True
    - mode: '0440'
    - contents: |
        # Managed by Salt (states/appliance/ssh.sls): the SSH-key login administers the box.
        {{ ssh.admin_user }} ALL=(ALL) NOPASSWD:ALL
    - require:
      - user: appliance-admin-user
{%- endif %}
