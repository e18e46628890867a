"""The registry_sync service (not built yet: see appliance/catalog.py)."""
