-- Messages: the conversation log, sequence counters, delivery cursors, search and schedules.
--
-- Conversations are stored in their text form (`d:<low>:<high>`, `g:<group>`), sorted by "C"
-- collation so that the pending listing's order and its cursor comparisons agree everywhere.
-- Recipients are stored as a kind and an id. Times are milliseconds since the Unix epoch.

-- One counter per conversation, bumped (and so row-locked) by the transaction that inserts the
-- message it numbers: concurrent appends to one conversation queue on the row, and commit in
-- sequence order. Rows are never deleted, so retention never lets a number be reused.
CREATE TABLE conversations (
    id       TEXT   COLLATE "C" PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TABLE messages (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation  TEXT   COLLATE "C" NOT NULL,
    seq           BIGINT NOT NULL,
    sender        BIGINT NOT NULL,
    to_kind       TEXT   NOT NULL CHECK (to_kind IN ('user', 'group')),
    to_id         BIGINT NOT NULL,
    client_msg_id TEXT   NOT NULL,
    body          TEXT   NOT NULL,
    -- The body lower-cased by Rust (`str::to_lowercase`), what search matches against, so that
    -- case folding does not depend on the database's locale.
    body_folded   TEXT   NOT NULL,
    sent_at       BIGINT NOT NULL,
    UNIQUE (conversation, seq),
    -- The idempotency key: a retried append finds the first one here.
    UNIQUE (sender, client_msg_id)
);

CREATE INDEX messages_by_sent_at ON messages (sent_at);
CREATE INDEX messages_by_sender ON messages (sender, id);

-- Which direct conversations a user is in, filled at a conversation's first append, so that
-- pending and search need not scan every conversation.
CREATE TABLE participants (
    user_id      BIGINT NOT NULL,
    conversation TEXT   COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, conversation)
);

-- Delivery cursors: the highest sequence a user acknowledged in a conversation.
CREATE TABLE cursors (
    user_id      BIGINT NOT NULL,
    conversation TEXT   COLLATE "C" NOT NULL,
    seq          BIGINT NOT NULL,
    PRIMARY KEY (user_id, conversation)
);

-- Scheduled messages: the message's fields, when it is due, and until when a claimer holds it.
CREATE TABLE scheduled (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sender        BIGINT NOT NULL,
    to_kind       TEXT   NOT NULL CHECK (to_kind IN ('user', 'group')),
    to_id         BIGINT NOT NULL,
    client_msg_id TEXT   NOT NULL,
    body          TEXT   NOT NULL,
    sent_at       BIGINT NOT NULL,
    deliver_at    BIGINT NOT NULL,
    claimed_until BIGINT
);

CREATE INDEX scheduled_by_due ON scheduled (deliver_at, id);

-- Search matches every word as a substring of body_folded (LIKE '%word%'). A trigram index
-- lets PostgreSQL answer that without reading every visible message. pg_trgm ships with
-- PostgreSQL (contrib) and is a trusted extension, but installing it may still be refused
-- (no contrib package, no CREATE right on the database): then search works without the index.
-- It goes into `public`, shared by every namespace, never into this namespace's schema, whose
-- removal would take the other namespaces' indexes with it.
DO $$
DECLARE
    trgm_schema name;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION pg_trgm SCHEMA public;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_trgm is not available (%); message search runs without an index',
                SQLERRM;
        END;
    END IF;
    SELECT n.nspname INTO trgm_schema
    FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
    WHERE e.extname = 'pg_trgm';
    IF trgm_schema IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX messages_body_trgm ON messages USING gin (body_folded %I.gin_trgm_ops)',
            trgm_schema);
    END IF;
END
$$;
