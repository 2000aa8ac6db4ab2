-- Sessions: who is online, on which server, and which servers are alive.
--
-- A session lives as long as its server's heartbeat row: a session is live when its server's
-- `expires_at` is in the future. A crashed server stops renewing, and all its sessions expire
-- together without a single row being touched. Times come from the database's clock
-- (`now_ms()`), never a node's, so that nodes with skewed clocks agree on what expired.

CREATE FUNCTION now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE session_servers (
    server_id  TEXT   COLLATE "C" PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- One row per user: a user has at most one session. Rows of dead servers stay until the user
-- binds again or their server is removed; every read filters them out.
CREATE TABLE sessions (
    user_id       BIGINT PRIMARY KEY,
    server_id     TEXT   COLLATE "C" NOT NULL,
    connection_id BIGINT NOT NULL,
    device        TEXT   NOT NULL,
    login_at      BIGINT NOT NULL
);

CREATE INDEX sessions_by_server ON sessions (server_id);
