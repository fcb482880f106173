//! Standard output that a reader going away does not break.
//!
//! `println!` panics when standard output is a pipe whose reader has gone (`shadowbucket simulate
//! | head -3`), which would end a command before it writes its files. [`outln!`] and [`out!`]
//! write through [`write`] instead: a closed pipe ends the output quietly and the command carries
//! on; any other failure to write ends the output too and is reported at exit ([`failure`]).

use std::io::Write;
use std::sync::Mutex;

/// Why standard output stopped: `None` while it works, `Some(None)` after a closed pipe,
/// `Some(Some(message))` after any other error.
static STOPPED: Mutex<Option<Option<String>>> = Mutex::new(None);

/// Writes `args` to standard output, unless it has stopped (see the module docs).
pub fn write(args: std::fmt::Arguments<'_>) {
    let mut stopped = STOPPED.lock().unwrap_or_else(|p| p.into_inner());
    if stopped.is_some() {
        return;
    }
    if let Err(e) = std::io::stdout().lock().write_fmt(args) {
        *stopped = Some(match e.kind() {
            std::io::ErrorKind::BrokenPipe => None,
            _ => Some(format!("cannot write to standard output: {e}")),
        });
    }
}

/// Flushes standard output, and says why it failed, if it did for any reason but a closed pipe.
pub fn failure() -> Option<String> {
    let flushed = std::io::stdout().lock().flush();
    let mut stopped = STOPPED.lock().unwrap_or_else(|p| p.into_inner());
    if let (None, Err(e)) = (&*stopped, flushed) {
        *stopped = Some(match e.kind() {
            std::io::ErrorKind::BrokenPipe => None,
            _ => Some(format!("cannot write to standard output: {e}")),
        });
    }
    stopped.clone().flatten()
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
