//! Standard output that a reader going away does not break.
//!
//! `println!` panics when standard output is a pipe whose reader has gone (`shadowbucket simulate
//! | head -3`), which would end a command before it writes its files. [`outln!`] and [`out!`]
//! write through [`write`] instead: a closed pipe ends the output quietly and the command carries
//! on; any other failure to write ends the output too and is reported at exit ([`failure`]).

use std::io::Write;
use std::sync::Mutex;

/// Where standard output stands.
enum State {
    /// Writing works.
    Open,
    /// The reader went away (a closed pipe): output ends quietly.
    Closed,
    /// Writing failed otherwise; the message is reported at exit.
    Failed(String),
}

static STATE: Mutex<State> = Mutex::new(State::Open);

/// The state a failed write leaves.
fn stopped_by(e: &std::io::Error) -> State {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => State::Closed,
        _ => State::Failed(format!("cannot write to standard output: {e}")),
    }
}

/// Writes `args` to standard output, unless it has stopped (see the module docs).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if let State::Open = *state
        && let Err(e) = std::io::stdout().lock().write_fmt(args)
    {
        *state = stopped_by(&e);
    }
}

/// Flushes standard output, and says why it failed, if it did for any reason but a closed pipe.
pub fn failure() -> Option<String> {
    let flushed = std::io::stdout().lock().flush();
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if let (State::Open, Err(e)) = (&*state, flushed) {
        *state = stopped_by(&e);
    }
    match &*state {
        State::Failed(m) => Some(m.clone()),
        State::Open | State::Closed => None,
    }
}

/// `print!` through [`write`].
macro_rules! out {
    ($($t:tt)*) => {
        $crate::out::write(format_args!($($t)*))
    };
}

/// `println!` through [`write`].
macro_rules! outln {
    () => {
        $crate::out::write(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::out::write(format_args!("{}\n", format_args!($($t)*)))
    };
}

pub(crate) use {out, outln};
