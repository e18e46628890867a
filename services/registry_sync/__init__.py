"""The registry_sync service: keeps REGISTRY_DIR/registry.json current through TUF (see appliance/registry/agent.py)."""
