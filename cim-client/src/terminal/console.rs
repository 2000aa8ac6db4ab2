//! The two ends of the screen: typed lines in, printed lines out.
//!
//! On a terminal, `rustyline` edits the line (cursor keys, history with up/down, Ctrl-R) and its
//! external printer writes incoming messages *above* the prompt, redrawing what the user was
//! typing. Anywhere else (a pipe, a script, the tests) lines are read one by one from stdin and
//! output is written line by line to stdout, flushed at once so a reader sees it immediately.
//!
//! Both line editors block, so reading happens on a dedicated thread that hands lines to the
//! async loop over a bounded channel. That thread cannot be interrupted in the middle of a
//! blocking read; it ends when the process does, or when its channel is closed and the next
//! line arrives.

use std::io::{self, BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// How many typed lines may wait for the loop (typing faster than that blocks the reader,
/// nothing is dropped).
const INPUT_CAPACITY: usize = 64;

/// What the reader thread hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A typed line, without its newline.
    Line(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// End of input (Ctrl-D, or stdin closed).
    End,
}

/// Where output goes; clones share it.
#[derive(Clone)]
pub struct Printer {
    sink: Arc<Mutex<Sink>>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer").finish_non_exhaustive()
    }
}

enum Sink {
    Plain(io::Stdout),
    Editor(Box<dyn ExternalPrinter + Send>),
}

impl Printer {
    /// Plain stdout.
    fn plain() -> Printer {
        Printer {
            sink: Arc::new(Mutex::new(Sink::Plain(io::stdout()))),
        }
    }

    /// Prints one line (or several, separated by newlines). Output errors (a closed pipe) are
    /// ignored: there is nobody left to tell.
    pub fn line(&self, text: impl Into<String>) {
        let text = text.into();
        let mut sink = match self.sink.lock() {
            Ok(sink) => sink,
            Err(poisoned) => poisoned.into_inner(),
        };
        match &mut *sink {
            Sink::Plain(stdout) => {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Sink::Editor(printer) => {
                let _ = printer.print(format!("{text}\n"));
            }
        }
    }
}

/// The console: the typed lines, and the printer.
#[derive(Debug)]
pub struct Console {
    /// Typed lines, in order; ends after [`Input::End`].
    pub input: mpsc::Receiver<Input>,
    /// Output.
    pub printer: Printer,
    /// Whether stdin is a terminal (line editing on).
    pub interactive: bool,
    /// Set to stop the line editor after the line it is reading now.
    stop: Arc<AtomicBool>,
}

impl Console {
    /// Ends the console. A line editor holds the terminal in raw mode while it reads, and only
    /// gives it back when that read returns: unless the user's own quit ended the input, ask for
    /// one more Enter, so the shell gets its terminal back in a sane state.
    pub async fn close(mut self, input_ended: bool) {
        self.stop.store(true, Ordering::SeqCst);
        if self.interactive && !input_ended {
            self.printer.line("press Enter to leave");
            let _ = self.input.recv().await;
        }
    }
}

/// Starts reading stdin: with a line editor and `prompt` on a terminal, plainly otherwise.
pub fn open(prompt: String) -> io::Result<Console> {
    let (tx, rx) = mpsc::channel(INPUT_CAPACITY);
    if io::stdin().is_terminal() && io::stdout().is_terminal() {
        let mut editor = DefaultEditor::new().map_err(io::Error::other)?;
        let printer = editor.create_external_printer().map_err(io::Error::other)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_reading = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("cim-line-editor".into())
            .spawn(move || edit_lines(editor, &prompt, &tx, &stop_reading))?;
        Ok(Console {
            input: rx,
            printer: Printer {
                sink: Arc::new(Mutex::new(Sink::Editor(Box::new(printer)))),
            },
            interactive: true,
            stop,
        })
    } else {
        std::thread::Builder::new()
            .name("cim-stdin".into())
            .spawn(move || read_lines(&tx))?;
        Ok(Console {
            input: rx,
            printer: Printer::plain(),
            interactive: false,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }
}

fn edit_lines(
    mut editor: DefaultEditor,
    prompt: &str,
    tx: &mpsc::Sender<Input>,
    stop: &AtomicBool,
) {
    loop {
        let input = match editor.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                Input::Line(line)
            }
            Err(ReadlineError::Interrupted) => Input::Interrupted,
            Err(ReadlineError::Eof) => Input::End,
            Err(error) => {
                tracing::warn!(%error, "cannot read the terminal");
                Input::End
            }
        };
        // After a quit the terminal must leave raw mode before the process exits, so no
        // further prompt is opened.
        let last = match &input {
            Input::Line(line) => super::commands::parse(line) == Ok(super::commands::Command::Quit),
            Input::Interrupted | Input::End => true,
        };
        if tx.blocking_send(input).is_err() || last || stop.load(Ordering::SeqCst) {
            return;
        }
    }
}

fn read_lines(tx: &mpsc::Sender<Input>) {
    for line in io::stdin().lock().lines() {
        match line {
            Ok(line) => {
                if tx.blocking_send(Input::Line(line)).is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read stdin");
                break;
            }
        }
    }
    let _ = tx.blocking_send(Input::End);
}
