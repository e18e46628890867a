# Masterless: `salt-call --local state.apply` (install.sh, states/apply.sh).
base:
  '*':
    - appliance
