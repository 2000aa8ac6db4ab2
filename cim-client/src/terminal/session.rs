//! Carrying out typed commands, one at a time, in the order typed.
//!
//! Commands run on their own task so that a slow route call or a send waiting for a reconnect
//! never stops incoming messages from being shown (the SDK stops reading from the server while
//! its events wait, so the event loop must keep draining them). One task, one queue: messages
//! go out in the order they were typed, and a message that could not be sent yet (the
//! connection is down) is retried with the same id until it is stored, so nothing typed is
//! lost and nothing is stored twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::message::new_client_msg_id;
use crate::terminal::commands::{Command, Draft, HELP, TargetSpec};
use crate::terminal::console::Printer;
use crate::terminal::emoji;
use crate::terminal::log::{ChatLog, Direction, Entry};
use crate::terminal::render::{MessageLine, Place, Style, clock, now_ms};
use crate::{
    Client, ClientError, ConnectionState, Conversation, MessageView, Outgoing, Recipient,
    SendReceipt,
};

/// How long to wait before sending again a message the connection could not take.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// How many users `:olu` and `:pu` list.
const LIST_LIMIT: u32 = 100;

/// How many hits `:q` shows.
const SEARCH_LIMIT: u32 = 20;

/// Names learnt along the way (from messages, listings, lookups), shared with the event loop
/// so it can show group names and the sender of search hits.
#[derive(Debug, Default)]
pub struct Names {
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
}

impl Names {
    /// Remembers a user's name.
    pub fn user(&mut self, id: u64, name: &str) {
        self.users.insert(id, name.to_string());
    }

    /// Remembers a group's name.
    pub fn group(&mut self, id: u64, name: &str) {
        self.groups.insert(id, name.to_string());
    }

    /// A user's name, or `#<id>` when unknown.
    pub fn user_label(&self, id: u64) -> String {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// Whether the group's name is known.
    pub fn knows_group(&self, id: u64) -> bool {
        self.groups.contains_key(&id)
    }

    /// A group's name (`all` for group 0), or its id when unknown.
    pub fn group_label(&self, id: u64) -> String {
        if id == 0 {
            return "all".into();
        }
        self.groups
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    fn user_id(&self, name: &str) -> Option<u64> {
        self.users
            .iter()
            .find(|(_, known)| known.to_lowercase() == name.to_lowercase())
            .map(|(id, _)| *id)
    }
}

/// What the event loop and the command task share.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Output.
    pub printer: Printer,
    /// Colours.
    pub style: Style,
    /// Known names.
    pub names: Arc<Mutex<Names>>,
    /// The chat log, if any.
    pub log: Arc<Mutex<Option<ChatLog>>>,
}

impl Shared {
    /// Runs `f` on the names.
    pub fn names<T>(&self, f: impl FnOnce(&mut Names) -> T) -> T {
        match self.names.lock() {
            Ok(mut names) => f(&mut names),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Appends to the chat log, if there is one; a failing log is reported and then closed.
    pub fn record(&self, entry: &Entry<'_>) {
        let mut log = match self.log.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(open) = log.as_mut()
            && let Err(error) = open.record(entry)
        {
            self.printer.line(self.style.error(&format!(
                "cannot write the chat log {}: {error}; logging stops",
                open.path().display()
            )));
            *log = None;
        }
    }

    fn error(&self, text: impl AsRef<str>) {
        self.printer.line(self.style.error(text.as_ref()));
    }

    fn status(&self, text: impl AsRef<str>) {
        self.printer.line(self.style.status(text.as_ref()));
    }

    fn info(&self, text: impl AsRef<str>) {
        self.printer.line(self.style.info(text.as_ref()));
    }
}

/// Where plain lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    recipient: Recipient,
    label: String,
}

impl Target {
    fn all() -> Target {
        Target {
            recipient: Recipient::All,
            label: "#all".into(),
        }
    }
}

/// The command task's state.
#[derive(Debug)]
pub struct Session {
    client: Client,
    shared: Shared,
    route_url: String,
    target: Target,
    ai: bool,
}

impl Session {
    /// A session sending to the "all" group.
    pub fn new(client: Client, shared: Shared, route_url: String) -> Session {
        Session {
            client,
            shared,
            route_url,
            target: Target::all(),
            ai: false,
        }
    }

    /// Carries out one command; failures are printed, never fatal.
    pub async fn handle(&mut self, command: Command) {
        if let Err(error) = self.dispatch(command).await {
            self.shared.error(explain(&error));
        }
    }

    async fn dispatch(&mut self, command: Command) -> Result<(), ClientError> {
        match command {
            Command::Send(draft) => self.send(draft, None).await,
            Command::Delay { seconds, draft } => self.send(draft, Some(seconds)).await,
            Command::Help => {
                self.help();
                Ok(())
            }
            Command::OnlineUsers => self.online_users().await,
            Command::PrefixUsers(prefix) => self.prefix_users(&prefix).await,
            Command::Search(query) => self.search(&query).await,
            Command::Info => {
                self.info();
                Ok(())
            }
            Command::Emoji(page) => {
                self.emoji(page);
                Ok(())
            }
            Command::AiOn => {
                self.ai = true;
                self.shared
                    .status("AI mode on: the AI answers what you send (:qai to stop)");
                Ok(())
            }
            Command::AiOff => {
                self.ai = false;
                self.shared.status("AI mode off");
                Ok(())
            }
            Command::To(spec) => {
                self.target = self.resolve(&spec).await?;
                self.shared
                    .status(format!("plain lines now go to {}", self.target.label));
                Ok(())
            }
            Command::Groups => self.groups().await,
            Command::Create(name) => {
                let group = self.client.create_group(&name).await?;
                self.shared.names(|n| n.group(group.group_id, &group.name));
                self.shared.status(format!(
                    "created group {} (id {}); :to #{} to talk there, :invite <user> to add people",
                    group.name, group.group_id, group.name
                ));
                Ok(())
            }
            Command::Join(group) => {
                let spec = leading_hash_off(&group);
                let found = match spec.parse::<u64>() {
                    Ok(id) => self
                        .client
                        .join_group(id)
                        .await
                        .map(|()| (id, spec.to_string())),
                    Err(_) => {
                        let found = self.client.find_group(&spec).await?;
                        self.client
                            .join_group(found.group_id)
                            .await
                            .map(|()| (found.group_id, found.name))
                    }
                };
                let (id, name) = found?;
                self.shared.names(|n| n.group(id, &name));
                self.shared
                    .status(format!("joined #{name}; :to #{name} to talk there"));
                Ok(())
            }
            Command::Leave(group) => {
                let target = self
                    .resolve(&TargetSpec::Group(leading_hash_off(&group)))
                    .await?;
                let Recipient::Group(id) = target.recipient else {
                    return Err(ClientError::InvalidInput(
                        "everyone is in the \"all\" group; it cannot be left".into(),
                    ));
                };
                let me = self.client.info().user_id;
                self.client.remove_member(id, me).await?;
                if self.target.recipient == Recipient::Group(id) {
                    self.target = Target::all();
                }
                self.shared.status(format!(
                    "left {}; plain lines go to {}",
                    target.label, self.target.label
                ));
                Ok(())
            }
            Command::Invite { user, group } => self.invite(&user, group).await,
            Command::History(count) => self.history(count).await,
            Command::Quit | Command::Nothing => Ok(()),
        }
    }

    async fn send(&mut self, draft: Draft, delay: Option<u64>) -> Result<(), ClientError> {
        let target = match &draft.to {
            Some(spec) => self.resolve(spec).await?,
            None => self.target.clone(),
        };
        let text = emoji::replace_aliases(&draft.text);
        let mut outgoing =
            Outgoing::new(target.recipient, text.clone()).client_msg_id(new_client_msg_id());
        let deliver_at = delay.map(|seconds| SystemTime::now() + Duration::from_secs(seconds));
        if let Some(at) = deliver_at {
            outgoing = outgoing.deliver_at(at);
        }
        let mut told = false;
        let receipt = loop {
            match self.client.send(outgoing.clone()).await {
                Ok(receipt) => break receipt,
                Err(error) if error.is_retryable() && !self.stopped() => {
                    if !told {
                        self.shared.status(format!(
                            "not sent yet ({error}); it goes out once the connection is back"
                        ));
                        told = true;
                    }
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(error) => return Err(error),
            }
        };
        let me = self.client.info().user_name;
        match receipt {
            SendReceipt::Stored {
                conversation,
                sent_at,
                ..
            } => {
                self.shared.record(&Entry {
                    at: sent_at,
                    direction: Direction::Out,
                    conversation: &conversation.to_string(),
                    sender: &me,
                    text: &text,
                });
                if told {
                    self.shared
                        .status(format!("sent to {}: {text}", target.label));
                }
            }
            SendReceipt::Scheduled { .. } => {
                let at = deliver_at.map_or_else(now_ms, system_ms);
                self.shared.record(&Entry {
                    at,
                    direction: Direction::Scheduled,
                    conversation: &recipient_label(target.recipient),
                    sender: &me,
                    text: &text,
                });
                self.shared.status(format!(
                    "scheduled for {} UTC to {}: {text}",
                    clock(at),
                    target.label
                ));
            }
        }
        if self.ai && delay.is_none() {
            self.shared.info(format!("AI: {}", ai_answer(&text)));
        }
        Ok(())
    }

    fn stopped(&self) -> bool {
        matches!(self.client.state(), ConnectionState::Disconnected { .. })
    }

    /// A user or group named by the user, as a target.
    async fn resolve(&self, spec: &TargetSpec) -> Result<Target, ClientError> {
        match spec {
            TargetSpec::User(user) => {
                let (id, name) = self.user(user).await?;
                Ok(Target {
                    recipient: Recipient::User(id),
                    label: name,
                })
            }
            TargetSpec::Group(group) => {
                if group.eq_ignore_ascii_case("all") || group == "0" {
                    return Ok(Target::all());
                }
                if let Ok(id) = group.parse::<u64>() {
                    let label = self.shared.names(|n| n.group_label(id));
                    return Ok(Target {
                        recipient: Recipient::Group(id),
                        label: format!("#{label}"),
                    });
                }
                let groups = self.client.my_groups().await?;
                let found = groups
                    .iter()
                    .find(|g| g.name.to_lowercase() == group.to_lowercase())
                    .ok_or_else(|| {
                        ClientError::NotFound(format!(
                            "you are in no group named {group}; :groups lists yours"
                        ))
                    })?;
                self.shared.names(|n| n.group(found.group_id, &found.name));
                Ok(Target {
                    recipient: Recipient::Group(found.group_id),
                    label: format!("#{}", found.name),
                })
            }
        }
    }

    /// A user by numeric id or by exact name (ignoring case): id and name.
    async fn user(&self, user: &str) -> Result<(u64, String), ClientError> {
        if let Ok(id) = user.parse::<u64>() {
            let name = self.shared.names(|n| n.user_label(id));
            return Ok((id, name));
        }
        if let Some(id) = self.shared.names(|n| n.user_id(user)) {
            return Ok((id, user.to_string()));
        }
        let page = self
            .client
            .search_users(user, None, Some(LIST_LIMIT))
            .await?;
        let wanted = user.to_lowercase();
        let found = page
            .items
            .iter()
            .find(|candidate| candidate.name.to_lowercase() == wanted)
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "there is no user named {user}; :pu {user} lists names starting so"
                ))
            })?;
        self.shared.names(|n| n.user(found.user_id, &found.name));
        Ok((found.user_id, found.name.clone()))
    }

    fn help(&self) {
        let width = HELP.iter().map(|(usage, _)| usage.len()).max().unwrap_or(0);
        let mut text = String::from("commands:");
        for (usage, help) in HELP {
            text.push_str(&format!("\n  {usage:<width$}  {help}"));
        }
        self.shared.info(text);
    }

    async fn online_users(&self) -> Result<(), ClientError> {
        let page = self.client.online_users(None, Some(LIST_LIMIT)).await?;
        let mut text = format!("online users ({}):", page.items.len());
        for user in &page.items {
            self.shared.names(|n| n.user(user.user_id, &user.name));
            text.push_str(&format!(
                "\n  {} (id {}) on {}",
                user.name, user.user_id, user.server_id
            ));
        }
        if page.next_cursor.is_some() {
            text.push_str(&format!(
                "\n  ... and more (the first {LIST_LIMIT} are shown)"
            ));
        }
        self.shared.info(text);
        Ok(())
    }

    async fn prefix_users(&self, prefix: &str) -> Result<(), ClientError> {
        let page = self
            .client
            .search_users(prefix, None, Some(LIST_LIMIT))
            .await?;
        if page.items.is_empty() {
            self.shared
                .info(format!("no user name starts with {prefix:?}"));
            return Ok(());
        }
        let mut text = format!("users starting with {prefix:?} ({}):", page.items.len());
        for user in &page.items {
            self.shared.names(|n| n.user(user.user_id, &user.name));
            text.push_str(&format!("\n  {} (id {})", user.name, user.user_id));
        }
        self.shared.info(text);
        Ok(())
    }

    async fn search(&self, query: &str) -> Result<(), ClientError> {
        let page = self
            .client
            .search_messages(query, None, Some(SEARCH_LIMIT))
            .await?;
        if page.items.is_empty() {
            self.shared.info(format!("no message contains {query:?}"));
            return Ok(());
        }
        let mut text = format!("messages matching {query:?}, newest first:");
        for message in &page.items {
            text.push_str("\n  ");
            text.push_str(&self.message_line(message, Some(query)));
        }
        self.shared.info(text);
        Ok(())
    }

    async fn history(&self, count: u32) -> Result<(), ClientError> {
        let me = self.client.info().user_id;
        let conversation = match self.target.recipient {
            Recipient::User(user) => Conversation::direct(me, user),
            Recipient::Group(group) => Conversation::Group(group),
            Recipient::All => Conversation::ALL,
        };
        let messages = self
            .client
            .history(conversation, None, None, Some(count))
            .await?;
        if messages.is_empty() {
            self.shared
                .info(format!("no messages with {} yet", self.target.label));
            return Ok(());
        }
        let mut text = format!("last {} with {}:", messages.len(), self.target.label);
        for message in &messages {
            text.push_str("\n  ");
            text.push_str(&self.message_line(message, None));
        }
        self.shared.info(text);
        Ok(())
    }

    /// A stored message as a line, with `query`'s words highlighted.
    fn message_line(&self, message: &MessageView, query: Option<&str>) -> String {
        let me = self.client.info();
        let sender = if message.sender_id == me.user_id {
            me.user_name.clone()
        } else {
            self.shared.names(|n| n.user_label(message.sender_id))
        };
        let group = message
            .conversation
            .parse::<Conversation>()
            .ok()
            .and_then(|c| c.group())
            .map(|group| self.shared.names(|n| n.group_label(group)));
        let body = match query {
            Some(query) => self.shared.style.highlight(&message.body, query),
            None => message.body.clone(),
        };
        self.shared.style.message(&MessageLine {
            sent_at: message.sent_at,
            place: group.as_deref().map_or(Place::Private, Place::Group),
            sender: &sender,
            body: &body,
            unread: false,
        })
    }

    fn info(&self) {
        let info = self.client.info();
        let state = match &info.state {
            ConnectionState::Connecting => "connecting".to_string(),
            ConnectionState::Connected { .. } => "connected".to_string(),
            ConnectionState::Reconnecting { attempt, after } => {
                format!("reconnecting (attempt {attempt} in {after:.1?})")
            }
            ConnectionState::Disconnected { reason } => format!("disconnected ({reason:?})"),
        };
        let log = match self.shared.log.lock() {
            Ok(log) => log.as_ref().map(|l| l.path().display().to_string()),
            Err(poisoned) => poisoned
                .into_inner()
                .as_ref()
                .map(|l| l.path().display().to_string()),
        };
        self.shared.info(format!(
            "you:        {} (id {})\nserver:     {} (connection {})\nconnection: {state}\nroute:      {}\ntarget:     {}\nAI mode:    {}\nlog:        {}",
            info.user_name,
            info.user_id,
            info.server_id,
            info.connection_id,
            self.route_url,
            self.target.label,
            if self.ai { "on" } else { "off" },
            log.as_deref().unwrap_or("off (--chat-log <path> to keep one)"),
        ));
    }

    fn emoji(&self, page: usize) {
        let pages = emoji::page_count();
        let entries = emoji::page(page);
        if entries.is_empty() {
            self.shared.error(format!(
                "there are {pages} pages of emoji; :emoji 1 to {pages}"
            ));
            return;
        }
        let mut text = format!("emoji, page {page} of {pages} (type :alias: in a message):");
        for (alias, emoji) in entries {
            text.push_str(&format!("\n  {emoji}  :{alias}:"));
        }
        self.shared.info(text);
    }

    async fn groups(&self) -> Result<(), ClientError> {
        let groups = self.client.my_groups().await?;
        let mut text = String::from("your groups:\n  #all (id 0): everyone online");
        for group in &groups {
            self.shared.names(|n| n.group(group.group_id, &group.name));
            text.push_str(&format!("\n  #{} (id {})", group.name, group.group_id));
        }
        self.shared.info(text);
        Ok(())
    }

    async fn invite(&self, user: &str, group: Option<String>) -> Result<(), ClientError> {
        let target = match group {
            Some(group) => self.resolve(&TargetSpec::Group(group)).await?,
            None => self.target.clone(),
        };
        let Recipient::Group(group_id) = target.recipient else {
            return Err(ClientError::InvalidInput(
                "say which group: :invite <user> #group, or :to #group first (everyone is in #all already)"
                    .into(),
            ));
        };
        let (user_id, name) = self.user(user).await?;
        self.client.add_member(group_id, user_id).await?;
        self.shared
            .status(format!("added {name} to {}", target.label));
        Ok(())
    }
}

fn leading_hash_off(group: &str) -> String {
    group.trim().trim_start_matches('#').to_string()
}

fn recipient_label(recipient: Recipient) -> String {
    match recipient {
        Recipient::User(user) => format!("user:{user}"),
        Recipient::Group(group) => format!("group:{group}"),
        Recipient::All => "all".into(),
    }
}

fn system_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// An error as one sentence for the screen.
pub fn explain(error: &ClientError) -> String {
    match error {
        ClientError::Unsupported(message) => {
            format!("the route does not support this: {message}")
        }
        other => other.to_string(),
    }
}

/// The original's famous "AI worth a hundred million": turn the question into an answer.
pub fn ai_answer(text: &str) -> String {
    let swapped: Vec<String> = text
        .split(' ')
        .map(|word| match word.to_lowercase().as_str() {
            "you" => "I".to_string(),
            "your" => "my".to_string(),
            "are" => "am".to_string(),
            "i" => "you".to_string(),
            "my" => "your".to_string(),
            _ => word.to_string(),
        })
        .collect();
    let answer = swapped.join(" ");
    let answer = answer.trim_end_matches(['?', '？']);
    format!("{answer}!")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ai_turns_questions_into_answers() {
        assert_eq!(ai_answer("are you ok?"), "am I ok!");
        assert_eq!(ai_answer("can you hear me"), "can I hear me!");
    }

    #[test]
    fn unknown_names_show_as_ids_and_group_zero_is_all() {
        let mut names = Names::default();
        assert_eq!(names.user_label(7), "#7");
        assert_eq!(names.group_label(0), "all");
        assert_eq!(names.group_label(3), "3");
        names.user(7, "Zoë");
        names.group(3, "team");
        assert_eq!(names.user_label(7), "Zoë");
        assert_eq!(names.group_label(3), "team");
        assert_eq!(names.user_id("zoë"), Some(7), "names match ignoring case");
    }
}
