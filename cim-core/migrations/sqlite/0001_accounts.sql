-- Accounts: users, groups and memberships.
--
-- Ids come from AUTOINCREMENT so they are never reused, even after the highest row is gone.
-- Names are unique by their canonical form (NFC, lower case), computed in Rust and kept in its
-- own column; the name as typed is what is shown.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL,
    canonical     TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL, -- PHC string ($argon2id$...)
    created_at    INTEGER NOT NULL  -- milliseconds since the Unix epoch
);

-- "groups" is an SQL keyword (window frames), hence the prefix.
CREATE TABLE chat_groups (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    canonical  TEXT    NOT NULL UNIQUE,
    owner      INTEGER NOT NULL REFERENCES users (id),
    created_at INTEGER NOT NULL
);

-- Members of a group by user id (the primary key), and a user's groups by group id (the index).
CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES chat_groups (id),
    user_id  INTEGER NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;

CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
