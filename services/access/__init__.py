"""The access service (not built yet: see appliance/catalog.py)."""
