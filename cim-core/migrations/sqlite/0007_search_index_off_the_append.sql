-- The search index leaves the append's transaction: the writer thread indexes committed messages
-- in batches after their commit, when it has nothing else to do or a batch has piled up (see the
-- `search_index` module). `indexed_up_to` is the highest message id the index covers: every
-- message at or below it is indexed, every one above it is not, and search scans those (a
-- bounded tail) instead of the index. Message ids only grow (AUTOINCREMENT), and only the writer
-- inserts messages and moves the mark, so the rule holds without locks of our own.
--
-- Every message of a file from before this migration was indexed by the insert trigger: the mark
-- starts at the highest id there is.
CREATE TABLE search_index_state (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_up_to INTEGER NOT NULL
);

INSERT INTO search_index_state (id, indexed_up_to) SELECT 1, COALESCE(MAX(id), 0) FROM messages;

DROP TRIGGER messages_fts_insert;

-- A message leaves the index with its row, if it was ever in it: FTS5 must not be told to
-- delete what it never held (its external-content index would no longer match).
DROP TRIGGER messages_fts_delete;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages
WHEN old.id <= (SELECT indexed_up_to FROM search_index_state)
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body_folded)
    VALUES ('delete', old.id, old.body_folded);
END;
