-- Group access control: who may join (access), what new members may read (history), each
-- member's role and the first sequence they may read (since), and the users banned from a group.
--
-- Groups that existed before keep the behaviour they had: open, full history, their owner the
-- owner and everyone else a member who may read everything.

ALTER TABLE chat_groups ADD COLUMN access TEXT NOT NULL DEFAULT 'open';   -- open | invite_only | closed
ALTER TABLE chat_groups ADD COLUMN history TEXT NOT NULL DEFAULT 'full';  -- full | since_join

ALTER TABLE group_members ADD COLUMN role TEXT NOT NULL DEFAULT 'member'; -- member | admin | owner
ALTER TABLE group_members ADD COLUMN since INTEGER NOT NULL DEFAULT 1;

UPDATE group_members SET role = 'owner'
WHERE (group_id, user_id) IN (SELECT id, owner FROM chat_groups);

-- A banned user is no member, and cannot become one until unbanned.
CREATE TABLE group_bans (
    group_id INTEGER NOT NULL REFERENCES chat_groups (id),
    user_id  INTEGER NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
