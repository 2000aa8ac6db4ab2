-- Names are unique by their confusable skeleton too (UTS #39, cim_core::name_skeleton): a name
-- that only looks like a taken one is taken. The skeleton is computed in Rust, like the
-- canonical form, and compared byte by byte ("C" collation) like the other keys.
--
-- SQL cannot compute a skeleton, so rows from before this migration start with NULL, and the
-- store fills them in when it opens, right after migrating and under the same lock (see
-- `backfill_skeletons` in src/accounts.rs). NULLs never conflict in a UNIQUE index, so until
-- then, and for the later of two old names that look alike (which keeps NULL), nothing breaks.
-- Rows that nodes of an older version insert during a rolling upgrade are NULL too, and are
-- filled in at the next start of a node of this version.

ALTER TABLE users ADD COLUMN skeleton TEXT COLLATE "C";
ALTER TABLE chat_groups ADD COLUMN skeleton TEXT COLLATE "C";

CREATE UNIQUE INDEX users_by_skeleton ON users (skeleton);
CREATE UNIQUE INDEX chat_groups_by_skeleton ON chat_groups (skeleton);
