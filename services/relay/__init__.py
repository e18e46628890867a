"""The relay service (not built yet: see appliance/catalog.py)."""
