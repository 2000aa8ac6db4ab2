-- Server registrations: one row per live (or recently expired) server, with a lease.
--
-- A registration is live while `expires_at` (database clock, see now_ms()) is in the future;
-- its owner renews it every third of the TTL. `lease` identifies the owner: only it renews,
-- updates or deletes the row, and registering the same id again succeeds only once the row
-- has expired. Changes are announced with NOTIFY on channel `cim_meta` in the same
-- transaction, so watchers hear of them in commit order.

CREATE SEQUENCE meta_leases;

CREATE TABLE meta_servers (
    server_id  TEXT   COLLATE "C" PRIMARY KEY,
    info       TEXT   NOT NULL, -- the ServerInfo as JSON
    lease      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
