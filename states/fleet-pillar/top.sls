# The salt-master's pillar tree for a 3-box layout (docs/fleet.md "Salt master and a
# 3-box layout"): copy this directory to appliance:fleet:pillar_dir on the master
# (default /srv/appliance-fleet/pillar), put your full box pillar in
# appliance-common.sls (start from states/pillar.example), then
#   salt --config-dir=/opt/appliance/salt/etc-fleet '*' state.apply
# Files listed later for a minion override earlier ones (Salt merges them in top-file
# order), so each box's file only says what differs. Minion ids: state, mail1, mail2.
base:
  'state':
    - appliance-common
    - state
  'mail1':
    - appliance-common
    - mail1
  'mail2':
    - appliance-common
    - mail2
