"""Test helpers: dev boxes as real processes, real peers, network namespaces."""
