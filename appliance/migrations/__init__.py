"""Versioned schema migrations of the shared stores, applied by `appliance db migrate` (appliance/accounts_pg.py).

``pg/NNNN_name.sql``: one file per schema version, applied in order, each in its own transaction.
Never edit a released file; add the next number.
"""
