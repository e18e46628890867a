# The appliance formula: one state per concern, in the order a box is assembled.
# The pillar is checked first (map.jinja at render time, then appliance.config in
# validate.sls) so a bad value stops the run before anything it configures changes.
include:
  - appliance.packages
  - appliance.users
  - appliance.venv
  - appliance.validate
  - appliance.dkim
  - appliance.tls
  - appliance.certbot
  - appliance.config
  - appliance.supervisor
  - appliance.firewall
  - appliance.logrotate
