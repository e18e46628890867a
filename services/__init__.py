"""What the box runs: thin processes around the `appliance` core."""
