-- Logins revoked before their tokens expire (logout): every token of the login is refused
-- until `until`, after which the row is useless and deleted.
CREATE TABLE revoked_sessions (
    session_id TEXT    PRIMARY KEY,
    until      INTEGER NOT NULL -- milliseconds since the Unix epoch
) WITHOUT ROWID;

CREATE INDEX revoked_sessions_by_until ON revoked_sessions (until);
