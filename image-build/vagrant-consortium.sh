#!/bin/bash
# After `vagrant up`: join the four demo machines into one consortium, doing what its
# operator and its members do by hand (docs/registry.md), through `vagrant ssh`:
#
#   1. every machine's self-signed certificate (its highstate issued it for its own names)
#      into one bundle, installed on each (step 3) as /etc/appliance/consortium-ca.pem
#      (relay.ca_file and colo's relay.upstream.ca_file in image-build/vagrant-pillar/);
#   2. on registry: `appliance registry init /srv/consortium`, add-member isp-a (isp-a.test,
#      and colo.test, the edge box it sponsors) and isp-b, each with its relay address and
#      its certificate's SPKI pin, publish; public/ is copied to /srv/registry (port 8080);
#   3. the operator's 1.root.json pinned on every machine (/etc/appliance/registry-root.json,
#      registry.root of the pillars), appliance.service restarted, one `registry sync --once`;
#   4. colo's upstream account on isp-a (the password of colo's pillar).
#
# Run from the checkout, after `vagrant up`: image-build/vagrant-consortium.sh
# Running it again re-pins the certificates and publishes a new registry version.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MEMBERS="isp-a isp-b"
MACHINES="registry isp-a isp-b colo"
declare -A ADDR=([registry]=192.168.77.10 [isp-a]=192.168.77.11 [isp-b]=192.168.77.12 [colo]=192.168.77.20)
declare -A DOMAINS=([isp-a]="isp-a.test colo.test" [isp-b]="isp-b.test")
CERT=/etc/appliance/tls/selfsigned/cert.pem
REPO=/srv/consortium
COLO_LOGIN=colo@isp-a.test
COLO_PASSWORD="demo colo password"   # image-build/vagrant-pillar/colo.sls

T0=$(date +%s)
say() { printf '[consortium %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
# One command on a machine, as root, stdin passed through; no tty, so output is clean.
on() { local m=$1; shift; vagrant ssh "$m" --no-tty -c "sudo bash -euo pipefail -c $(printf '%q' "$*")"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "certificates of $MACHINES"
: >"$work/bundle.pem"
for m in $MACHINES; do
  on "$m" "cat $CERT" | tr -d '\r' >"$work/$m.pem"
  openssl x509 -noout -in "$work/$m.pem" >/dev/null   # refuse anything that is not a certificate
  cat "$work/$m.pem" >>"$work/bundle.pem"
done

say "registry: init, add-member $MEMBERS, publish"
ops="install -d -m 0750 -o appliance -g appliance $REPO
test -f $REPO/repo.json || appliance registry init $REPO --consortium 'Vagrant demo consortium' --code-of-practice 2026-1"
for m in $MEMBERS; do
  pin=$(openssl x509 -in "$work/$m.pem" -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum | cut -d' ' -f1)
  args="--name 'ISP ${m#isp-}' --abuse abuse@$m.test --relay ${ADDR[$m]}:25=${ADDR[$m]} --pin $pin"
  doms=""
  for d in ${DOMAINS[$m]}; do doms="$doms --domain $d"; done
  ops="$ops
if appliance registry show $REPO --json | python3 -c 'import json,sys; sys.exit(0 if any(x[\"id\"] == \"$m\" for x in json.load(sys.stdin)[\"members\"]) else 1)'; then
  appliance registry update-member $REPO $m $args
else
  appliance registry add-member $REPO --without-probe --id $m $doms $args
fi"
done
ops="$ops
appliance registry publish $REPO
install -d -m 0755 /srv/registry
rsync -a --delete --chmod=D755,F644 $REPO/public/ /srv/registry/"
on registry "$ops"
on registry "cat /srv/registry/metadata/1.root.json" | tr -d '\r' >"$work/root.json"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))["signed"]["roles"]["root"]' "$work/root.json"

say "install the bundle and pin the registry's root on $MACHINES, restart, sync"
tar -C "$work" -cf "$work/join.tar" bundle.pem root.json
for m in $MACHINES; do
  on "$m" "d=\$(mktemp -d); tar -x -C \$d
install -m 0644 \$d/bundle.pem /etc/appliance/consortium-ca.pem
install -m 0640 -g appliance \$d/root.json /etc/appliance/registry-root.json
rm -rf \$d
systemctl restart appliance.service
appliance registry sync --once" <"$work/join.tar"
done

say "colo's upstream account $COLO_LOGIN on isp-a"
on isp-a "appliance user list | grep -q '^$COLO_LOGIN\\b' || appliance user add $COLO_LOGIN --password-stdin" \
  <<<"$COLO_PASSWORD"
say "done"
