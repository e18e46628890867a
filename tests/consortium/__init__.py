"""The consortium in network namespaces: harness and scenarios (docs/consortium.md)."""
