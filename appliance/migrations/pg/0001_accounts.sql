-- Shared accounts (issue 16 item 3): the same data as the SQLite store (appliance/accounts.py),
-- with the columns SQLite gained later (quota_*, admin) from the start.
CREATE TABLE accounts (
    address        TEXT PRIMARY KEY,
    password       TEXT NOT NULL,              -- argon2id PHC string, never a clear password
    disabled       BOOLEAN NOT NULL DEFAULT false,
    limit_class    TEXT NOT NULL DEFAULT 'default',
    per_minute     DOUBLE PRECISION,
    burst          INTEGER,
    per_day        INTEGER,
    held           BOOLEAN NOT NULL DEFAULT false,
    held_reason    TEXT NOT NULL DEFAULT '',
    held_since     DOUBLE PRECISION,           -- Unix time, as in SQLite
    created        DOUBLE PRECISION NOT NULL,
    quota_storage  BIGINT,
    quota_messages BIGINT,
    admin          BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE identities (
    identity TEXT PRIMARY KEY,
    address  TEXT NOT NULL REFERENCES accounts(address) ON DELETE CASCADE
);
CREATE INDEX identities_address ON identities(address);
CREATE INDEX accounts_held ON accounts(address) WHERE held;
