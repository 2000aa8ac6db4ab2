-- Group access control: who may join (access), what new members may read (history), each
-- member's role and the first sequence they may read (since), and the users banned from a group.
--
-- Groups that existed before keep the behaviour they had: open, full history, their owner the
-- owner and everyone else a member who may read everything. The names are the stable ones of
-- GroupAccess, GroupHistory and Role (as_str), checked when read back.

ALTER TABLE chat_groups
    ADD COLUMN access  TEXT NOT NULL DEFAULT 'open',  -- open | invite_only | closed
    ADD COLUMN history TEXT NOT NULL DEFAULT 'full';  -- full | since_join

ALTER TABLE group_members
    ADD COLUMN role  TEXT   NOT NULL DEFAULT 'member', -- member | admin | owner
    ADD COLUMN since BIGINT NOT NULL DEFAULT 1;

UPDATE group_members m SET role = 'owner'
FROM chat_groups g
WHERE g.id = m.group_id AND g.owner = m.user_id;

-- A banned user is no member, and cannot become one until unbanned. The primary key lists a
-- group's bans by user id.
CREATE TABLE group_bans (
    group_id BIGINT NOT NULL REFERENCES chat_groups (id),
    user_id  BIGINT NOT NULL REFERENCES users (id),
    PRIMARY KEY (group_id, user_id)
);
