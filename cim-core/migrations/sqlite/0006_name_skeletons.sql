-- Names are unique by their confusable skeleton too (UTS #39): a name that only looks like a
-- taken one is taken. The skeleton is computed in Rust; rows from before this migration get
-- theirs when the store opens (NULLs do not conflict in a UNIQUE index meanwhile).
ALTER TABLE users ADD COLUMN skeleton TEXT;
ALTER TABLE chat_groups ADD COLUMN skeleton TEXT;
CREATE UNIQUE INDEX users_by_skeleton ON users (skeleton);
CREATE UNIQUE INDEX chat_groups_by_skeleton ON chat_groups (skeleton);
