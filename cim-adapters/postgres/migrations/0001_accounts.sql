-- Accounts: users, groups and memberships.
--
-- Ids come from identity columns, whose sequences never hand out a number twice (a rolled-back
-- insert leaves a gap, which the contract allows). Names are unique by their canonical form
-- (NFC, lower case), computed in Rust and kept in its own column; the name as typed is what is
-- shown. The canonical column sorts by "C" collation (byte order, which for UTF-8 is code point
-- order), so that prefix search is a plain range scan on its unique index.

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          TEXT   NOT NULL,
    canonical     TEXT   COLLATE "C" NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL, -- PHC string ($argon2id$...)
    created_at    BIGINT NOT NULL  -- milliseconds since the Unix epoch
);

-- "groups" is an SQL keyword (window frames), hence the prefix.
CREATE TABLE chat_groups (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT   NOT NULL,
    canonical  TEXT   COLLATE "C" NOT NULL UNIQUE,
    owner      BIGINT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL
);

-- Members of a group by user id (the primary key), and a user's groups by group id (the index).
CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES chat_groups (id),
    user_id  BIGINT NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
);

CREATE INDEX group_members_by_user ON group_members (user_id, group_id);
