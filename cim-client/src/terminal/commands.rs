//! What a typed line means: a pure parser, so every command's syntax is tested without a
//! server, and the loop only acts on [`Command`]s.
//!
//! The syntax is the original cim client's (`:q!`, `:olu`, `<user>;;<text>`...), plus target,
//! group and history commands. A line that starts with `:` but names no command is an error,
//! not a message: sending `:qq` to everyone by mistake is worse than a hint.

use std::fmt;

/// Who a message or a `:to` names, before it is resolved through the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// A user, by name (matched case-insensitively) or numeric id.
    User(String),
    /// A group, by name (among the user's groups) or numeric id; `all` and `0` are the built-in
    /// "all" group.
    Group(String),
}

impl TargetSpec {
    /// `#name` or `#id` is a group, anything else a user.
    fn parse(text: &str) -> Option<TargetSpec> {
        let text = text.trim();
        match text.strip_prefix('#') {
            Some(group) if !group.trim().is_empty() => Some(TargetSpec::Group(group.trim().into())),
            Some(_) => None,
            None if text.is_empty() => None,
            None => Some(TargetSpec::User(text.into())),
        }
    }
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::User(user) => f.write_str(user),
            TargetSpec::Group(group) => write!(f, "#{group}"),
        }
    }
}

/// A message typed by the user: where it goes and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// An explicit recipient (`<user>;;<text>`); `None` means the current target.
    pub to: Option<TargetSpec>,
    /// The text, as typed (emoji aliases are replaced when it is sent).
    pub text: String,
}

impl Draft {
    /// `bob;;hi` is a private message to bob; anything else goes to the current target.
    fn parse(line: &str) -> Result<Draft, String> {
        if let Some((user, text)) = line.split_once(";;") {
            let user = user.trim();
            if user.is_empty() {
                return Err("say who the message is for: <user>;;<text>".into());
            }
            if text.trim().is_empty() {
                return Err(format!("the message to {user} is empty"));
            }
            return Ok(Draft {
                to: Some(TargetSpec::User(user.into())),
                text: text.into(),
            });
        }
        Ok(Draft {
            to: None,
            text: line.into(),
        })
    }
}

/// A parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A message (a plain line, or `<user>;;<text>`).
    Send(Draft),
    /// `:q!`: quit.
    Quit,
    /// `:all`: the command list.
    Help,
    /// `:olu`: online users.
    OnlineUsers,
    /// `:q <keyword...>`: search the message history on the server.
    Search(String),
    /// `:pu <prefix>`: users whose name starts with the prefix.
    PrefixUsers(String),
    /// `:info`: who, where, connection state.
    Info,
    /// `:emoji [page]`: a page of the emoji table (1-based).
    Emoji(usize),
    /// `:delay <seconds> <message...>`: a message the server delivers later.
    Delay {
        /// How long from now.
        seconds: u64,
        /// The message (may itself be `<user>;;<text>`).
        draft: Draft,
    },
    /// `:ai`: the joke "AI" answers each message sent.
    AiOn,
    /// `:qai`: quit the joke mode.
    AiOff,
    /// `:to <user|#group>`: set the current target.
    To(TargetSpec),
    /// `:groups`: the user's groups.
    Groups,
    /// `:join <group>`: join a group, by name or id.
    Join(String),
    /// `:leave <group>`: leave a group.
    Leave(String),
    /// `:create <name>`: create a group (and become its first member).
    Create(String),
    /// `:invite <user> [#group]`: add a user to a group (default: the current target group).
    Invite {
        /// The user to add.
        user: String,
        /// The group; `None` means the current target.
        group: Option<String>,
    },
    /// `:history [n]`: the last `n` messages of the current conversation.
    History(u32),
    /// An empty line: nothing to do.
    Nothing,
}

/// How many messages `:history` shows without a count.
pub const DEFAULT_HISTORY: u32 = 20;

/// The largest count `:history` accepts (the route's page limit).
pub const MAX_HISTORY: u32 = 100;

/// Every command with its one-line help, in the order `:all` lists them.
pub const HELP: &[(&str, &str)] = &[
    (":all", "this list"),
    (":q!", "quit"),
    (":olu", "users online now"),
    (
        ":q <keyword...>",
        "search your message history on the server",
    ),
    (":pu <prefix>", "users whose name starts with <prefix>"),
    (":info", "who you are, which server, connection state"),
    (
        ":emoji [page]",
        "emoji you can type as :alias: in a message",
    ),
    (
        ":delay <seconds> <message>",
        "the server delivers the message later (also <user>;;<text>)",
    ),
    (":ai / :qai", "the original's joke AI mode on / off"),
    (
        ":to <user|#group>",
        "where plain lines go (#all by default)",
    ),
    (":groups", "your groups"),
    (":create <name>", "create a group"),
    (":join <group>", "join a group (by name, #name or id)"),
    (":leave <group>", "leave a group"),
    (
        ":invite <user> [#group]",
        "add a user to a group (default: the current one)",
    ),
    (":history [n]", "the last n messages here (default 20)"),
    ("<user>;;<text>", "a private message, by user name or id"),
    ("<text>", "a message to the current target"),
];

/// Parses one typed line; the error says how to write it correctly.
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(Command::Nothing);
    }
    let trimmed = line.trim_start();
    if !trimmed.starts_with(':') || is_emoji_alias_line(trimmed) {
        return Draft::parse(line).map(Command::Send);
    }
    let (name, rest) = match trimmed.split_once(char::is_whitespace) {
        Some((name, rest)) => (name, rest.trim()),
        None => (trimmed, ""),
    };
    let needs = |what: &str| -> Result<String, String> {
        if rest.is_empty() {
            Err(format!("{name} needs {what}"))
        } else {
            Ok(rest.to_string())
        }
    };
    let command = match name {
        ":q!" => Command::Quit,
        ":all" => Command::Help,
        ":olu" => Command::OnlineUsers,
        ":q" => Command::Search(needs("a keyword: :q <keyword>")?),
        ":pu" => Command::PrefixUsers(needs("a prefix: :pu <prefix>")?),
        ":info" => Command::Info,
        ":emoji" => Command::Emoji(page_number(rest)?),
        ":delay" => delay(rest)?,
        ":ai" => Command::AiOn,
        ":qai" => Command::AiOff,
        ":to" => Command::To(
            TargetSpec::parse(rest).ok_or(":to needs a user or #group: :to bob, :to #all")?,
        ),
        ":groups" => Command::Groups,
        ":join" => Command::Join(needs("a group: :join team")?),
        ":leave" => Command::Leave(needs("a group: :leave 5 or :leave #name")?),
        ":create" => Command::Create(needs("a name: :create rustaceans")?),
        ":invite" => invite(rest)?,
        ":history" => Command::History(history_count(rest)?),
        _ => {
            return Err(format!(
                "{name} is not a command; :all lists them (to send a line starting with ':', put a space before it)"
            ));
        }
    };
    Ok(command)
}

/// `:smile: hello` is a message that starts with an emoji, not a command.
fn is_emoji_alias_line(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or_default();
    first.len() > 2
        && first.ends_with(':')
        && crate::terminal::emoji::lookup(&first[1..first.len() - 1]).is_some()
}

fn page_number(rest: &str) -> Result<usize, String> {
    if rest.is_empty() {
        return Ok(1);
    }
    match rest.parse::<usize>() {
        Ok(page) if page >= 1 => Ok(page),
        _ => Err(format!("{rest:?} is not a page number (1, 2, ...)")),
    }
}

fn delay(rest: &str) -> Result<Command, String> {
    const USAGE: &str = ":delay <seconds> <message>, e.g. :delay 60 stand-up now";
    let (seconds, message) = rest.split_once(char::is_whitespace).ok_or(USAGE)?;
    let seconds = seconds
        .parse::<u64>()
        .map_err(|_| format!("{seconds:?} is not a number of seconds; {USAGE}"))?;
    let message = message.trim();
    if message.is_empty() {
        return Err(USAGE.into());
    }
    Ok(Command::Delay {
        seconds,
        draft: Draft::parse(message)?,
    })
}

fn invite(rest: &str) -> Result<Command, String> {
    let mut words = rest.split_whitespace();
    let user = words
        .next()
        .ok_or(":invite needs a user: :invite bob [#group]")?;
    let group = words
        .next()
        .map(|group| group.trim_start_matches('#').to_string());
    if words.next().is_some() {
        return Err("usage: :invite <user> [#group]".into());
    }
    Ok(Command::Invite {
        user: user.into(),
        group,
    })
}

fn history_count(rest: &str) -> Result<u32, String> {
    if rest.is_empty() {
        return Ok(DEFAULT_HISTORY);
    }
    match rest.parse::<u32>() {
        Ok(n) if (1..=MAX_HISTORY).contains(&n) => Ok(n),
        _ => Err(format!(
            "{rest:?} is not a count of messages (1 to {MAX_HISTORY})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap_or_else(|e| panic!("{line:?} should parse: {e}"))
    }

    fn send(to: Option<TargetSpec>, text: &str) -> Command {
        Command::Send(Draft {
            to,
            text: text.into(),
        })
    }

    #[test]
    fn plain_lines_go_to_the_current_target_as_typed() {
        assert_eq!(ok("hello world"), send(None, "hello world"));
        assert_eq!(ok("  indented"), send(None, "  indented"));
        assert_eq!(ok("q!"), send(None, "q!"));
    }

    #[test]
    fn user_double_semicolon_text_is_a_private_message_by_name_or_id() {
        let bob = Some(TargetSpec::User("bob".into()));
        assert_eq!(ok("bob;;hi"), send(bob, "hi"));
        assert_eq!(
            ok("42;;a;;b"),
            send(Some(TargetSpec::User("42".into())), "a;;b")
        );
        assert_eq!(
            ok("Zoë ;;héllo"),
            send(Some(TargetSpec::User("Zoë".into())), "héllo")
        );
        assert!(parse(";;hi").is_err());
        assert!(parse("bob;;  ").is_err());
    }

    #[test]
    fn the_original_commands_parse() {
        assert_eq!(ok(":q!"), Command::Quit);
        assert_eq!(ok(":all"), Command::Help);
        assert_eq!(ok(":olu"), Command::OnlineUsers);
        assert_eq!(ok(":info"), Command::Info);
        assert_eq!(ok(":ai"), Command::AiOn);
        assert_eq!(ok(":qai"), Command::AiOff);
        assert_eq!(ok(":q  two words "), Command::Search("two words".into()));
        assert_eq!(ok(":pu Zo"), Command::PrefixUsers("Zo".into()));
        assert_eq!(ok(":pu 张"), Command::PrefixUsers("张".into()));
    }

    #[test]
    fn quit_and_search_are_told_apart() {
        assert_eq!(ok(":q!"), Command::Quit);
        assert!(parse(":q").is_err(), "a search needs a keyword");
        assert_eq!(ok(":q q!"), Command::Search("q!".into()));
    }

    #[test]
    fn emoji_pages_default_to_the_first() {
        assert_eq!(ok(":emoji"), Command::Emoji(1));
        assert_eq!(ok(":emoji 3"), Command::Emoji(3));
        assert!(parse(":emoji 0").is_err());
        assert!(parse(":emoji two").is_err());
    }

    #[test]
    fn delay_takes_seconds_then_a_message_with_spaces() {
        assert_eq!(
            ok(":delay 5 see you in five"),
            Command::Delay {
                seconds: 5,
                draft: Draft {
                    to: None,
                    text: "see you in five".into()
                }
            }
        );
        assert_eq!(
            ok(":delay 1 bob;;later"),
            Command::Delay {
                seconds: 1,
                draft: Draft {
                    to: Some(TargetSpec::User("bob".into())),
                    text: "later".into()
                }
            }
        );
        for bad in [":delay", ":delay 5", ":delay soon hi", ":delay -1 hi"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn to_names_a_user_or_a_hash_group() {
        assert_eq!(ok(":to bob"), Command::To(TargetSpec::User("bob".into())));
        assert_eq!(ok(":to #all"), Command::To(TargetSpec::Group("all".into())));
        assert_eq!(ok(":to #7"), Command::To(TargetSpec::Group("7".into())));
        assert!(parse(":to").is_err());
        assert!(parse(":to #").is_err());
    }

    #[test]
    fn group_commands_need_their_argument() {
        assert_eq!(ok(":groups"), Command::Groups);
        assert_eq!(ok(":join 5"), Command::Join("5".into()));
        assert_eq!(ok(":leave #team"), Command::Leave("#team".into()));
        assert_eq!(ok(":create team"), Command::Create("team".into()));
        assert_eq!(
            ok(":invite bob #team"),
            Command::Invite {
                user: "bob".into(),
                group: Some("team".into())
            }
        );
        assert_eq!(
            ok(":invite bob"),
            Command::Invite {
                user: "bob".into(),
                group: None
            }
        );
        for bad in [":join", ":leave", ":create", ":invite", ":invite a b c"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn history_counts_default_to_twenty_and_are_bounded() {
        assert_eq!(ok(":history"), Command::History(DEFAULT_HISTORY));
        assert_eq!(ok(":history 5"), Command::History(5));
        assert!(parse(":history 0").is_err());
        assert!(parse(":history 1000").is_err());
    }

    #[test]
    fn unknown_commands_are_errors_not_messages() {
        let err = parse(":qq").expect_err("unknown");
        assert!(err.contains(":all"), "{err}");
    }

    #[test]
    fn a_line_starting_with_an_emoji_alias_is_a_message() {
        assert_eq!(ok(":smile: hi"), send(None, ":smile: hi"));
    }

    #[test]
    fn blank_lines_do_nothing() {
        assert_eq!(ok(""), Command::Nothing);
        assert_eq!(ok("   "), Command::Nothing);
    }

    #[test]
    fn every_command_has_a_help_line() {
        for (usage, help) in HELP {
            assert!(!usage.is_empty() && !help.is_empty());
        }
        for command in [
            ":q!", ":olu", ":q ", ":pu", ":info", ":emoji", ":delay", ":ai", ":to", ":groups",
            ":join", ":leave", ":create", ":invite", ":history",
        ] {
            assert!(
                HELP.iter()
                    .any(|(usage, _)| usage.starts_with(command.trim())),
                "{command} is missing from :all"
            );
        }
    }
}
