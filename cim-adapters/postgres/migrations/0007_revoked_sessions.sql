-- Logins revoked before their tokens expire (logout): every token of the login is refused
-- until `until`, after which the row is useless and deleted. The times are the nodes' clocks
-- (the same clock that checks a token's expiry), not the database's.
CREATE TABLE revoked_sessions (
    session_id TEXT   COLLATE "C" PRIMARY KEY,
    until      BIGINT NOT NULL -- milliseconds since the Unix epoch
);

CREATE INDEX revoked_sessions_by_until ON revoked_sessions (until);
