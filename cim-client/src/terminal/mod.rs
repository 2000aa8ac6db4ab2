//! The terminal chat client behind `cim client` (cargo feature `terminal`).
//!
//! It is a module of the SDK rather than of the `cim` binary so that it uses nothing the SDK
//! does not offer an application, and behind a feature so that applications embedding the SDK
//! never compile a line editor. The parts:
//!
//! - [`commands`]: what a typed line means (a pure parser);
//! - `console`: line editing on a terminal, plain lines on a pipe;
//! - `session`: carrying out commands in the order typed;
//! - [`render`]: how messages and status lines look, colour only for a terminal;
//! - [`emoji`]: `:smile:` aliases; [`log`]: the optional local chat log.
//!
//! The loop here shows incoming events as they come while commands run on their own task, so
//! a slow command never holds messages back.

pub mod commands;
mod console;
pub mod emoji;
pub mod log;
pub mod render;
mod session;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{
    Client, ClientBuilder, ClientError, ConnectionState, Conversation, DisconnectReason, Event,
    IncomingMessage,
};
use commands::Command;
use console::Input;
use log::{ChatLog, Direction, Entry};
use render::{MessageLine, Place, Style};
use session::{Names, Session, Shared};

/// The environment variable a script can set instead of typing the password.
pub const PASSWORD_ENV: &str = "CIM_PASSWORD";

/// How many typed commands may wait for the one running.
const COMMAND_QUEUE: usize = 256;

/// How long a group's name may take to look up before its message is shown with the id.
const GROUP_LOOKUP: Duration = Duration::from_secs(2);

/// How long `:q!` waits for typed messages still being sent.
const QUIT_GRACE: Duration = Duration::from_secs(10);

/// What `cim client` needs.
#[derive(Debug, Clone)]
pub struct TerminalArgs {
    /// The route's URL (`http://127.0.0.1:8080`).
    pub route: String,
    /// The user name.
    pub user: String,
    /// Create the account first.
    pub register: bool,
    /// Append every message to this file (see [`log`] for the format).
    pub chat_log: Option<PathBuf>,
}

/// Runs the chat client until the user quits or the server ends the session.
///
/// The password comes from `CIM_PASSWORD`, or is prompted for (without echo) when stdin is a
/// terminal. Exits with success after `:q!` or end of input, with failure when the session
/// was ended by the server (logged in elsewhere, or reconnecting gave up).
pub async fn run(args: TerminalArgs) -> Result<ExitCode, ClientError> {
    let password = password(&args.user).await?;
    let log = match &args.chat_log {
        Some(path) => Some(ChatLog::open(path).map_err(|e| ClientError::Unavailable {
            message: format!(
                "cannot open the chat log {}: check the directory exists and is writable",
                path.display()
            ),
            source: Some(Box::new(e)),
        })?),
        None => None,
    };
    let client = ClientBuilder::new(&args.route)
        .credentials(&args.user, password)
        .register(args.register)
        .device("cim terminal")
        .connect()
        .await?;
    let Some(mut events) = client.events() else {
        return Err(ClientError::protocol("the event stream was taken already"));
    };
    let console = console::open(format!("{}> ", client.info().user_name)).map_err(|e| {
        ClientError::Unavailable {
            message: "cannot read the terminal".into(),
            source: Some(Box::new(e)),
        }
    })?;
    let style = Style::detect(
        std::env::var_os("NO_COLOR"),
        std::io::stdout().is_terminal(),
    );
    let shared = Shared {
        printer: console.printer.clone(),
        style,
        names: Arc::new(Mutex::new(Names::default())),
        log: Arc::new(Mutex::new(log)),
    };
    let info = client.info();
    shared.names(|n| n.user(info.user_id, &info.user_name));
    shared.printer.line(style.status(&format!(
        "logged in as {} (id {}) on server {}; plain lines go to #all; :all lists the commands",
        info.user_name, info.user_id, info.server_id
    )));

    // Parse errors travel the same queue as commands, so output stays in the order typed.
    let (command_tx, mut command_rx) = mpsc::channel::<Result<Command, String>>(COMMAND_QUEUE);
    let mut session = Session::new(client.clone(), shared.clone(), args.route.clone());
    let worker_shared = shared.clone();
    let mut worker = tokio::spawn(async move {
        while let Some(command) = command_rx.recv().await {
            match command {
                Ok(command) => session.handle(command).await,
                Err(hint) => worker_shared.printer.line(worker_shared.style.error(&hint)),
            }
        }
    });

    let mut console = console;
    let mut command_tx = Some(command_tx);
    let mut input_ended = false;
    let outcome = loop {
        tokio::select! {
            input = console.input.recv(), if !input_ended => match input {
                Some(Input::Line(line)) => match commands::parse(&line) {
                    Ok(Command::Quit) => { input_ended = true; break Ok(()); }
                    Ok(Command::Nothing) => {}
                    parsed => {
                        if let Some(tx) = &command_tx && tx.send(parsed).await.is_err() {
                            break Err("the command task stopped".to_string());
                        }
                    }
                },
                Some(Input::Interrupted) | Some(Input::End) | None => {
                    input_ended = true;
                    break Ok(());
                }
            },
            event = events.recv() => match event {
                Some(event) => {
                    if let Some(reason) = show_event(&shared, &client, event).await {
                        break Err(reason);
                    }
                }
                None => break Err("the client stopped".to_string()),
            },
        }
    };

    // Let typed messages still queued go out before closing.
    command_tx.take();
    if tokio::time::timeout(QUIT_GRACE, &mut worker).await.is_err() {
        worker.abort();
        shared
            .printer
            .line(style.error("some typed messages could not be sent in time and were dropped"));
    }
    client.close().await;
    let code = match outcome {
        Ok(()) => {
            shared.printer.line(style.status("bye"));
            ExitCode::SUCCESS
        }
        Err(reason) => {
            shared.printer.line(style.error(&reason));
            ExitCode::FAILURE
        }
    };
    console.close(input_ended).await;
    Ok(code)
}

/// Prints an event; `Some(reason)` when the session is over.
async fn show_event(shared: &Shared, client: &Client, event: Event) -> Option<String> {
    let style = shared.style;
    match event {
        Event::Message(message) => {
            if let Conversation::Group(group) = message.conversation {
                learn_group_name(shared, client, group).await;
            }
            show_message(shared, client.info().user_id, &message);
            None
        }
        Event::State(ConnectionState::Connected { server_id }) => {
            shared
                .printer
                .line(style.status(&format!("connected to server {server_id}")));
            None
        }
        Event::State(ConnectionState::Connecting) => {
            shared.printer.line(style.status("connecting"));
            None
        }
        Event::State(ConnectionState::Reconnecting { attempt, after }) => {
            shared.printer.line(style.status(&format!(
                "connection lost; reconnecting (attempt {attempt} in {after:.1?}); what you type is sent once connected"
            )));
            None
        }
        Event::State(ConnectionState::Disconnected { reason }) => Some(match reason {
            DisconnectReason::Closed | DisconnectReason::LoggedOut => "disconnected".into(),
            DisconnectReason::Kicked(kick) => format!(
                "the server ended the session ({}); log in again to continue",
                kick.as_str_name()
            ),
            DisconnectReason::GaveUp {
                attempts,
                last_error,
            } => format!("gave up reconnecting after {attempts} attempts: {last_error}"),
            DisconnectReason::Rejected(why) => format!("logging in again was refused: {why}"),
        }),
        Event::Kicked { reason, text } => {
            shared.printer.line(style.error(&format!(
                "kicked by the server ({}): {text}",
                reason.as_str_name()
            )));
            None
        }
        Event::Undeliverable {
            conversation, seq, ..
        } => {
            shared.printer.line(style.error(&format!(
                "message {seq} of {conversation} could not be delivered (too large for this server)"
            )));
            None
        }
    }
}

/// Looks the name of a group up the first time one of its messages arrives (the user may have
/// been added by someone else), so that messages show `#team` rather than `#7`. Bounded: a
/// slow route delays one message line, and the id is shown instead.
async fn learn_group_name(shared: &Shared, client: &Client, group: u64) {
    if group == 0 || shared.names(|n| n.knows_group(group)) {
        return;
    }
    if let Ok(Ok(groups)) = tokio::time::timeout(GROUP_LOOKUP, client.my_groups()).await {
        shared.names(|n| {
            for known in &groups {
                n.group(known.group_id, &known.name);
            }
        });
    }
}

fn show_message(shared: &Shared, me: u64, message: &IncomingMessage) {
    shared.names(|n| n.user(message.sender_id, &message.sender_name));
    let group = match message.conversation {
        Conversation::Group(group) => Some(shared.names(|n| n.group_label(group))),
        Conversation::Direct { .. } => None,
    };
    shared.record(&Entry {
        at: message.sent_at,
        direction: if message.sender_id == me {
            Direction::Out
        } else {
            Direction::In
        },
        conversation: &message.conversation.to_string(),
        sender: &message.sender_name,
        text: &message.body,
    });
    shared.printer.line(shared.style.message(&MessageLine {
        sent_at: message.sent_at,
        place: group.as_deref().map_or(Place::Private, Place::Group),
        sender: &message.sender_name,
        body: &message.body,
        unread: message.offline,
    }));
}

/// The password: from the environment, or typed without echo on a terminal.
async fn password(user: &str) -> Result<String, ClientError> {
    if let Ok(password) = std::env::var(PASSWORD_ENV) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(ClientError::InvalidInput(format!(
            "no password: set {PASSWORD_ENV}, or run cim client in a terminal to be asked for it"
        )));
    }
    let prompt = format!("password for {user}: ");
    let typed = tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt))
        .await
        .map_err(|e| ClientError::Unavailable {
            message: "the password prompt failed".into(),
            source: Some(Box::new(e)),
        })?;
    typed.map_err(|e| ClientError::Unavailable {
        message: "cannot read the password from the terminal".into(),
        source: Some(Box::new(e)),
    })
}
