"""What the box publishes about itself, as pure functions of the config and the box's key files.

- ``records``: every DNS record the operator should publish (`appliance dns`);
- ``mtasts``: the MTA-STS policy text (RFC 8461) and its id;
- ``autoconfig``: Thunderbird autoconfig, Microsoft Autodiscover (POX) and an Apple .mobileconfig.

Nothing here listens or asks the network: the console serves these over HTTPS and
`appliance doctor` (appliance/doctor/) compares the records with the published DNS.
"""
