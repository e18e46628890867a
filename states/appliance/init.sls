# The appliance formula: one state per concern, in the order a box is assembled.
# The pillar is checked first (validate.sls: the formula's keys when it renders, then
# appliance:config by appliance.config) so a bad value stops the run before anything
# it configures changes.
include:
  - appliance.packages
  - appliance.users
  - appliance.venv
  - appliance.validate
  - appliance.firewall      # before certbot: standalone HTTP-01 needs port 80 open
  - appliance.ssh
  - appliance.move          # the service user's rrsync-only key for `user move --ssh` (fleet:move)
  - appliance.dkim
  - appliance.tls
  - appliance.certbot
  - appliance.config
  - appliance.unbound       # the validating resolver outbound DANE asks (before the relay starts)
  - appliance.supervisor
  - appliance.logrotate
  - appliance.tlsrpt        # the daily TLS-RPT reports timer
  - appliance.statebox      # redis-server / postgresql where appliance:state_services asks
  - appliance.fleet         # salt-minion of appliance:fleet:master; the salt-master when fleet:serve
