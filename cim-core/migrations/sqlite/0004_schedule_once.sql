-- A scheduled message is kept once per (sender, client_msg_id), like a message: a retry of the
-- same schedule answers the first entry. Delivered entries are marked finished rather than
-- deleted, so that a retry arriving after the delivery is still recognised; they are deleted
-- once the dedup window has passed.

-- Entries scheduled twice before this migration: keep the first.
DELETE FROM scheduled
WHERE id NOT IN (SELECT MIN(id) FROM scheduled GROUP BY sender, client_msg_id);

ALTER TABLE scheduled ADD COLUMN finished_at INTEGER; -- milliseconds; NULL while waiting

CREATE UNIQUE INDEX scheduled_by_key ON scheduled (sender, client_msg_id);

DROP INDEX scheduled_by_due;
CREATE INDEX scheduled_by_due ON scheduled (deliver_at, id) WHERE finished_at IS NULL;
CREATE INDEX scheduled_by_finish ON scheduled (finished_at) WHERE finished_at IS NOT NULL;
