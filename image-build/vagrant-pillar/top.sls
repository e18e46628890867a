# Per-machine pillars of the Vagrant consortium demo (../../Vagrantfile); the minion id
# is the machine name (salt.minion_id).
base:
  registry:
    - registry
  isp-a:
    - isp-a
  isp-b:
    - isp-b
  colo:
    - colo
