//! The events and external signals of a store, kept beside it in `<store>.events` so that they
//! survive restarts like the store does.
//!
//! A small text file, one record per line, rewritten whole on every change (a temporary file
//! beside it, synced, renamed over it, the directory synced), so it is always either the old or
//! the new version:
//!
//! ```text
//! shadowbucket-events 1
//! next <last event id>
//! event <id> <customer id or -> <kind> <intensity> <start_ns> <end_ns>
//! signal <value> <name>
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::events::{Event, EventBook};
use crate::error::{Error, Result};

const MAGIC: &str = "shadowbucket-events 1";

/// The sidecar path of a store.
pub fn path_for(store: &Path) -> PathBuf {
    let mut s = store.as_os_str().to_owned();
    s.push(".events");
    PathBuf::from(s)
}

/// The file's text for these events and signals.
pub(crate) fn render(book: &EventBook, signals: &BTreeMap<String, f32>) -> String {
    let mut text = format!("{MAGIC}\nnext {}\n", book.next_id());
    for (id, e) in book.iter() {
        let who = e.customer.map_or("-".to_string(), |c| c.to_string());
        let _ = writeln!(
            text,
            "event {id} {who} {} {} {} {}",
            e.kind, e.intensity, e.start_ns, e.end_ns
        );
    }
    for (name, v) in signals {
        let _ = writeln!(text, "signal {v} {name}");
    }
    text
}

/// Writes a [`render`]ed text atomically (a killed process leaves the old file or the new one,
/// never a mix; an error leaves the old one and no temporary file).
pub(crate) fn save_text(path: &Path, text: &str) -> Result<()> {
    crate::store::write_beside(path, ".tmp", |tmp| {
        let io = |e: std::io::Error| Error::io(tmp, e);
        let mut f = std::fs::File::create(tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)
    })
}

/// Reads a sidecar; a missing file is an empty book.
pub fn load(path: &Path) -> Result<(EventBook, BTreeMap<String, f32>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((EventBook::default(), BTreeMap::new()));
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let bad = |line: usize, why: &str| Error::bad_file(path, format!("line {line}: {why}"));
    let mut lines = text.lines().enumerate();
    if lines.next().map(|(_, l)| l) != Some(MAGIC) {
        return Err(bad(
            1,
            "not a shadowbucket events file (or an unknown version)",
        ));
    }
    let mut book = EventBook::default();
    let mut signals = BTreeMap::new();
    let mut next = 0;
    for (i, line) in lines {
        let n = i + 1;
        let mut w = line.split(' ');
        match w.next() {
            Some("next") => {
                next = w
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(n, "bad next id"))?;
            }
            Some("event") => {
                let f: Vec<&str> = w.collect();
                if f.len() != 6 {
                    return Err(bad(n, "an event has 6 fields"));
                }
                let num = |s: &str| s.parse::<u64>().map_err(|_| bad(n, "bad number"));
                let id = num(f[0])?;
                let customer = if f[1] == "-" { None } else { Some(num(f[1])?) };
                let kind = f[2].parse().map_err(|_| bad(n, "bad kind"))?;
                let intensity = f[3].parse().map_err(|_| bad(n, "bad intensity"))?;
                let e = Event {
                    customer,
                    kind,
                    intensity,
                    start_ns: num(f[4])?,
                    end_ns: num(f[5])?,
                };
                book.insert(id, e).map_err(|e| bad(n, &e.to_string()))?;
            }
            Some("signal") => {
                let v: f32 = w
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|v: &f32| v.is_finite())
                    .ok_or_else(|| bad(n, "bad signal value"))?;
                let name: Vec<&str> = w.collect();
                let name = name.join(" ");
                if name.is_empty() {
                    return Err(bad(n, "signal without a name"));
                }
                signals.insert(name, v);
            }
            Some("") | None => {}
            Some(other) => return Err(bad(n, &format!("unknown record {other:?}"))),
        }
    }
    book.set_next_id(next.max(book.iter().map(|(id, _)| id).max().unwrap_or(0)));
    Ok((book, signals))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = std::env::temp_dir().join(format!("sb-sidecar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.sb.events");
        assert!(load(&p).unwrap().0.is_empty());
        let mut b = EventBook::default();
        b.add(Event {
            customer: Some(9),
            kind: 3,
            intensity: 1.25,
            start_ns: 5,
            end_ns: 50,
        })
        .unwrap();
        let g = b
            .add(Event {
                customer: None,
                kind: 1,
                intensity: -0.5,
                start_ns: 0,
                end_ns: 7,
            })
            .unwrap();
        b.remove(g).unwrap();
        let mut s = BTreeMap::new();
        s.insert("news volume".to_string(), 3.5f32);
        save_text(&p, &render(&b, &s)).unwrap();
        let (b2, s2) = load(&p).unwrap();
        assert_eq!(b2.iter().collect::<Vec<_>>(), b.iter().collect::<Vec<_>>());
        assert_eq!(b2.next_id(), 2);
        assert_eq!(s2, s);
        std::fs::write(&p, "hello\n").unwrap();
        assert!(matches!(load(&p), Err(Error::BadFile { .. })));
        std::fs::write(&p, format!("{MAGIC}\nevent 1 - x 1 0 5\n")).unwrap();
        assert!(matches!(load(&p), Err(Error::BadFile { .. })));

        // A file whose last id is u64::MAX loads, and adding to it is an error, not an overflow;
        // a file with more events than a book holds is refused.
        std::fs::write(&p, format!("{MAGIC}\nnext {}\n", u64::MAX)).unwrap();
        let mut full = load(&p).unwrap().0;
        let e = Event {
            customer: None,
            kind: 1,
            intensity: 1.0,
            start_ns: 0,
            end_ns: 7,
        };
        assert!(matches!(full.add(e), Err(Error::InvalidArgument(_))));
        assert!(full.is_empty());
        let mut many = format!("{MAGIC}\n");
        for id in 1..=EventBook::MAX_EVENTS as u64 + 1 {
            let _ = writeln!(many, "event {id} - 1 1 0 7");
        }
        std::fs::write(&p, many).unwrap();
        let err = load(&p).unwrap_err();
        assert!(
            matches!(err, Error::BadFile { .. }) && err.to_string().contains("more than"),
            "{err}"
        );

        // A stale temporary file from a killed save is replaced; a save that cannot rename
        // (the path is a directory) fails with the path named and leaves no temporary file.
        let tmp = dir.join("a.sb.events.tmp");
        std::fs::write(&tmp, "left by a killed process").unwrap();
        save_text(&p, &render(&b, &s)).unwrap();
        assert!(!tmp.exists());
        assert_eq!(load(&p).unwrap().1, s);
        let d = dir.join("d.sb.events");
        std::fs::create_dir_all(&d).unwrap();
        let err = save_text(&d, &render(&b, &s)).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("d.sb.events"), "{err}");
        assert!(!dir.join("d.sb.events.tmp").exists());
        assert!(d.is_dir());
        std::fs::remove_dir_all(&dir).ok();
    }
}
