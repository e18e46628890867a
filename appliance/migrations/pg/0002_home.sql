-- Home boxes (issue 16 item 5, docs/fleet.md "Home boxes"): the fleet box (`fleet.box` name) that
-- holds the account's Maildir; '' means the box the account is used on (a single box).
ALTER TABLE accounts ADD COLUMN home TEXT NOT NULL DEFAULT '';
