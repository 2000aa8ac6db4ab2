-- A scheduled message is kept once per (sender, client_msg_id), like a message: a retry of the
-- same schedule answers the first entry. Delivered entries are marked finished rather than
-- deleted, so that a retry arriving after the delivery is still recognised; they are deleted
-- once the dedup window (cim_core::message_store::DEDUP_WINDOW) has passed.

-- Entries scheduled twice before this migration: keep the first.
DELETE FROM scheduled retry
USING scheduled kept
WHERE retry.sender = kept.sender
  AND retry.client_msg_id = kept.client_msg_id
  AND retry.id > kept.id;

ALTER TABLE scheduled ADD COLUMN finished_at BIGINT; -- milliseconds; NULL while waiting

-- The idempotency key, and what settles racing schedules of one key (ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX scheduled_by_key ON scheduled (sender, client_msg_id);

-- Claims look only at waiting entries; the clean-up only at finished ones.
DROP INDEX scheduled_by_due;
CREATE INDEX scheduled_by_due ON scheduled (deliver_at, id) WHERE finished_at IS NULL;
CREATE INDEX scheduled_by_finish ON scheduled (finished_at) WHERE finished_at IS NOT NULL;
