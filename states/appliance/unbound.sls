# The box's own DNSSEC-validating resolver (Debian's unbound) on loopback only.
# The relay asks it for MX, TLSA, MTA-STS and TLS-RPT records of outbound mail
# (relay.outbound.resolver, default 127.0.0.1) and trusts its AD bit: DANE for
# SMTP (RFC 7672) applies only to answers it validated. Debian's package already
# validates from the root with an RFC 5011 managed trust anchor
# (/etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf); this drop-in
# only keeps it on loopback. docs/internet.md "Outbound".
{%- from "appliance/map.jinja" import appliance with context %}
{%- from "appliance/macros.jinja" import unit_enabled %}

appliance-unbound-package:
  pkg.installed:
    - pkgs:
      - unbound
      # The root trust anchor seed (/usr/share/dns/root.key; a Recommends of unbound, so
      # not pulled in with install_recommends off): without it unbound finds no
      # auto-trust-anchor-file and refuses to start, and nothing could validate.
      - dns-root-data
    - refresh: False
    - install_recommends: False

appliance-unbound-conf:
  file.managed:
    - name: /etc/unbound/unbound.conf.d/appliance.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by Salt (states/appliance/unbound.sls).
        server:
            interface: 127.0.0.1
            interface: ::1
            access-control: 127.0.0.0/8 allow
            access-control: ::1/128 allow
            # answers for the relay, never for the Internet (no open resolver)
            harden-glue: yes
            harden-dnssec-stripped: yes
            qname-minimisation: yes
    - require:
      - pkg: appliance-unbound-package

# unbound.service makes /var/lib/unbound/root.key from dns-root-data at every start
# (ExecStartPre unbound-helper); do it now too, so unbound-checkconf can pass in a
# chroot (the image build) and the first start validates from the RFC 5011 anchor.
appliance-unbound-trust-anchor:
  cmd.run:
    - name: /usr/libexec/unbound-helper root_trust_anchor_update
    - creates: /var/lib/unbound/root.key
    - require:
      - pkg: appliance-unbound-package

appliance-unbound-checkconf:
  cmd.run:
    - name: unbound-checkconf
    - onchanges:
      - file: appliance-unbound-conf
    - require:
      - cmd: appliance-unbound-trust-anchor

{{ unit_enabled('appliance-unbound-enabled', 'unbound.service', appliance.booted, require=['file: appliance-unbound-conf']) }}

{%- if appliance.start_services %}
appliance-unbound-running:
  service.running:
    - name: unbound.service
    - watch:
      - file: appliance-unbound-conf
    - require:
      - cmd: appliance-unbound-checkconf
{%- endif %}
