//! Groups: who may join, who may read what, and who decides.
//!
//! A group has one owner (its creator), admins the owner names, and members. How one becomes a
//! member is the group's [`GroupAccess`]; how much of the conversation a new member may read is
//! its [`GroupHistory`]. A [banned](crate::AccountStore::ban) user is not a member and cannot
//! become one again, by joining or by being added, until unbanned.

use serde::{Deserialize, Serialize};

use super::{GroupId, NameRules, Seq, Timestamp, UserId, canonical_name, name_skeleton};
use crate::Result;

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group's id.
    pub id: GroupId,
    /// The group's name (unique, same rules as user names).
    pub name: String,
    /// The user who created the group, its owner.
    pub owner: UserId,
    /// When the group was created.
    pub created_at: Timestamp,
    /// Who may become a member.
    pub access: GroupAccess,
    /// What a new member may read.
    pub history: GroupHistory,
}

/// How one becomes a member of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAccess {
    /// Anyone may find the group by name and join it; any member may add others.
    #[default]
    Open,
    /// Only members may add others; outsiders can neither find nor join it.
    InviteOnly,
    /// Only the owner and admins may add members; outsiders can neither find nor join it.
    Closed,
}

impl GroupAccess {
    /// The stable lower-case name (`open`, `invite_only`, `closed`), as stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupAccess::Open => "open",
            GroupAccess::InviteOnly => "invite_only",
            GroupAccess::Closed => "closed",
        }
    }

    /// The access of a stored name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "open" => Some(GroupAccess::Open),
            "invite_only" => Some(GroupAccess::InviteOnly),
            "closed" => Some(GroupAccess::Closed),
            _ => None,
        }
    }
}

/// How much of a group's conversation a member may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupHistory {
    /// All of it, from before they joined too.
    #[default]
    Full,
    /// Only what was sent since they (last) joined: from their membership's
    /// [`since`](Membership::since) on.
    SinceJoin,
}

impl GroupHistory {
    /// The stable lower-case name (`full`, `since_join`), as stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupHistory::Full => "full",
            GroupHistory::SinceJoin => "since_join",
        }
    }

    /// The history setting of a stored name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "full" => Some(GroupHistory::Full),
            "since_join" => Some(GroupHistory::SinceJoin),
            _ => None,
        }
    }
}

/// A member's standing in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A member.
    Member,
    /// A member who may add and remove members, ban, and change the group's settings.
    Admin,
    /// The creator: an admin who also names admins, and who can be neither removed nor banned.
    Owner,
}

impl Role {
    /// The stable lower-case name (`member`, `admin`, `owner`), as stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// The role of a stored name, if it is one.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            "owner" => Some(Role::Owner),
            _ => None,
        }
    }

    /// Whether this role may manage the group (add, remove, ban, change settings).
    pub fn is_admin(self) -> bool {
        self >= Role::Admin
    }
}

/// One user's membership of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The member.
    pub user: UserId,
    /// Their standing.
    pub role: Role,
    /// The first sequence of the group's conversation they may read when the group's history
    /// is [`GroupHistory::SinceJoin`] (the group's next sequence when they joined; 1 for the
    /// owner, who was there from the start).
    pub since: Seq,
}

/// A validated new group.
#[derive(Debug, Clone)]
pub struct NewGroup {
    name: String,
    canonical: String,
    skeleton: String,
    owner: UserId,
    settings: GroupSettings,
}

/// What a group's owner or admins may change after creating it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Who may become a member.
    pub access: GroupAccess,
    /// What a new member may read.
    pub history: GroupHistory,
}

impl NewGroup {
    /// Validates the group `name`; `owner` becomes the group's first member. The group is
    /// open, with its full history readable, unless [`NewGroup::settings`] says otherwise.
    pub fn new(name: &str, owner: UserId, rules: &NameRules) -> Result<Self> {
        let name = rules.validate("group name", name)?;
        Ok(NewGroup {
            canonical: canonical_name(&name),
            skeleton: name_skeleton(&name),
            name,
            owner,
            settings: GroupSettings::default(),
        })
    }

    /// The group with these settings.
    pub fn settings(mut self, settings: GroupSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The name to store and show (NFC).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The canonical name, the uniqueness key.
    pub fn canonical_name(&self) -> &str {
        &self.canonical
    }

    /// The confusable skeleton, the second uniqueness key (see [`name_skeleton`]).
    pub fn skeleton(&self) -> &str {
        &self.skeleton
    }

    /// The creator, and first member.
    pub fn owner(&self) -> UserId {
        self.owner
    }

    /// Who may join, and what new members may read.
    pub fn group_settings(&self) -> GroupSettings {
        self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for access in [
            GroupAccess::Open,
            GroupAccess::InviteOnly,
            GroupAccess::Closed,
        ] {
            assert_eq!(GroupAccess::parse(access.as_str()), Some(access));
        }
        for history in [GroupHistory::Full, GroupHistory::SinceJoin] {
            assert_eq!(GroupHistory::parse(history.as_str()), Some(history));
        }
        for role in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn admins_and_owners_manage_members_do_not() {
        assert!(Role::Owner.is_admin() && Role::Admin.is_admin());
        assert!(!Role::Member.is_admin());
    }

    #[test]
    fn a_new_group_is_open_with_full_history_unless_told() {
        let group = NewGroup::new("Crew", UserId(1), &NameRules::default()).expect("valid");
        assert_eq!(group.group_settings(), GroupSettings::default());
        assert_eq!(group.canonical_name(), "crew");
        let closed = group.settings(GroupSettings {
            access: GroupAccess::Closed,
            history: GroupHistory::SinceJoin,
        });
        assert_eq!(closed.group_settings().access, GroupAccess::Closed);
    }
}
