-- Messages: the conversation log, sequence counters, delivery cursors, search and schedules.
--
-- Conversations are stored in their text form (`d:<low>:<high>`, `g:<group>`). Recipients are
-- stored as a kind and an id. Times are milliseconds since the Unix epoch.

-- One counter per conversation, bumped in the same transaction as the insert it numbers. Rows
-- are never deleted, so sequence numbers are never reused after retention deletes messages.
CREATE TABLE conversations (
    id       TEXT    PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation  TEXT    NOT NULL,
    seq           INTEGER NOT NULL,
    sender        INTEGER NOT NULL,
    to_kind       TEXT    NOT NULL CHECK (to_kind IN ('user', 'group')),
    to_id         INTEGER NOT NULL,
    client_msg_id TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    -- The body lower-cased by Rust (`str::to_lowercase`), what search matches against: SQLite's
    -- own lower() folds ASCII only.
    body_folded   TEXT    NOT NULL,
    sent_at       INTEGER NOT NULL,
    UNIQUE (conversation, seq),
    -- The idempotency key: a retried append finds the first one here.
    UNIQUE (sender, client_msg_id)
);

CREATE INDEX messages_by_sent_at ON messages (sent_at);

-- Which direct conversations a user is in, filled at a conversation's first append, so that
-- pending and search need not scan every conversation.
CREATE TABLE participants (
    user_id      INTEGER NOT NULL,
    conversation TEXT    NOT NULL,
    PRIMARY KEY (user_id, conversation)
) WITHOUT ROWID;

-- Delivery cursors: the highest sequence a user acknowledged in a conversation.
CREATE TABLE cursors (
    user_id      INTEGER NOT NULL,
    conversation TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation)
) WITHOUT ROWID;

-- Scheduled messages: the message's fields, when it is due, and until when a claimer holds it.
CREATE TABLE scheduled (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sender        INTEGER NOT NULL,
    to_kind       TEXT    NOT NULL CHECK (to_kind IN ('user', 'group')),
    to_id         INTEGER NOT NULL,
    client_msg_id TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    sent_at       INTEGER NOT NULL,
    deliver_at    INTEGER NOT NULL,
    claimed_until INTEGER
);

CREATE INDEX scheduled_by_due ON scheduled (deliver_at, id);

-- Full-text search: a trigram index over body_folded, so any substring of three characters or
-- more is found through the index. External content: the text lives only in messages, and the
-- triggers keep the index in step (messages are never updated, only inserted and deleted).
-- Case-sensitive because body_folded is folded already, exactly as the query words are.
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body_folded,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'trigram case_sensitive 1'
);

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body_folded) VALUES (new.id, new.body_folded);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body_folded)
    VALUES ('delete', old.id, old.body_folded);
END;
