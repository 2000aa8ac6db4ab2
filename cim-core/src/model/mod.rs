//! cim's domain types: the nouns every backend trait speaks in.
//!
//! They are plain data with `serde` support, so a backend may store them as JSON, and so the HTTP
//! API can return them as they are.

mod account;
mod conversation;
mod group;
mod ids;
mod message;
mod name;
mod page;
mod password;
mod server;
mod session;

pub use account::{NewUser, User};
pub use conversation::{ConversationId, Recipient};
pub use group::{Group, GroupAccess, GroupHistory, GroupSettings, Membership, NewGroup, Role};
pub use ids::{ConnectionId, GroupId, MessageId, ScheduledId, Seq, ServerId, Timestamp, UserId};
pub use message::{Appended, HistoryQuery, NewMessage, Scheduled, ScheduledMessage, StoredMessage};
pub use name::{NameRules, canonical_name, name_skeleton};
pub use page::{Cursor, Page};
pub use password::PasswordHash;
pub use server::ServerInfo;
pub use session::{BindOutcome, BindPolicy, Session, SessionRef};
