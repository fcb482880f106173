//! Every `memmap2` and file-lock call of the crate, in one place.
//!
//! A writer holds an exclusive advisory lock (`flock`) on the store file for as long as it has it
//! mapped, so no cooperating process writes or truncates the file under it. Read-only opens take
//! no lock: they map the file read-only and see the live state, which is safe because no writer
//! ever shrinks a store file (growing writes a new file and renames it over the old path, which
//! leaves the old inode, and so every existing mapping, intact). A snapshot taken through a
//! read-only open holds a shared lock on the file while it copies (see [`Mapping::hold_still`]), so
//! no writer opens the store in the middle of the copy.
//!
//! A store file has real blocks for every byte (see [`allocate`]): the engine writes it only
//! through the mapping, and a write to a hole of a mapped file on a full file system does not
//! fail, it kills the process (`SIGBUS`). So the space is taken when the store is made, grown or
//! opened for writing, where running out of it is an error that changes nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use memmap2::{Mmap, MmapMut};

use crate::error::{Error, Result};

/// A mapped store file.
pub(crate) enum Mapping {
    /// Mapped read-write, file exclusively locked.
    Write {
        /// The map.
        map: MmapMut,
        /// Kept open so the lock lives as long as the map.
        file: File,
    },
    /// Mapped read-only, no lock.
    Read {
        /// The map.
        map: Mmap,
        /// The mapped file (the one [`Mapping::hold_still`] locks, even after the path has been
        /// replaced by a grown store).
        file: File,
    },
}

/// Keeps the writers out of a read-only mapped store while it lives ([`Mapping::hold_still`]).
pub(crate) struct StillGuard<'a>(Option<&'a File>);

impl Drop for StillGuard<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.0 {
            let _ = f.unlock();
        }
    }
}

impl Mapping {
    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Mapping::Write { map, .. } => map,
            Mapping::Read { map, .. } => map,
        }
    }

    /// Makes sure nobody changes the mapped bytes while the guard lives: a writable mapping
    /// already holds the exclusive lock; a read-only one takes a shared lock on its file, which
    /// keeps writers from opening the store until the guard is dropped.
    ///
    /// # Errors
    /// [`Error::Locked`] when a writer has the store open.
    pub(crate) fn hold_still(&self, path: &Path) -> Result<StillGuard<'_>> {
        match self {
            Mapping::Write { .. } => Ok(StillGuard(None)),
            Mapping::Read { file, .. } => {
                if try_flock(file, true, path)? {
                    Ok(StillGuard(Some(file)))
                } else {
                    Err(Error::Locked(path.to_path_buf()))
                }
            }
        }
    }

    /// Whether `other` is the mapped file itself (same device and inode; on other systems, the same
    /// canonical path as `path`, the mapping's own).
    pub(crate) fn is_same_file(&self, path: &Path, other: &File, other_path: &Path) -> bool {
        self.id(path)
            .is_some_and(|mine| file_id(other, other_path).as_ref() == Some(&mine))
    }

    /// Which file is mapped (`path` is the mapping's own), if the system says.
    pub(crate) fn id(&self, path: &Path) -> Option<FileId> {
        let file = match self {
            Mapping::Write { file, .. } => file,
            Mapping::Read { file, .. } => file,
        };
        file_id(file, path)
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub(crate) fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Mapping::Write { map, .. } => Some(map),
            Mapping::Read { .. } => None,
        }
    }

    /// Gives every byte of a writable mapping's file real blocks ([`allocate`]; a store made by
    /// an older build, or copied as a snapshot, may have holes); nothing for a read-only one.
    pub(crate) fn allocate(&self, path: &Path) -> Result<()> {
        match self {
            Mapping::Write { map, file } => allocate(file, map.len() as u64, path),
            Mapping::Read { .. } => Ok(()),
        }
    }

    /// Writes dirty pages back to the file and waits for the disk.
    pub(crate) fn flush(&self, path: &Path) -> Result<()> {
        match self {
            Mapping::Write { map, .. } => map.flush().map_err(|e| Error::io(path, e)),
            Mapping::Read { .. } => Ok(()),
        }
    }
}

/// Makes `file` `len` bytes long with real blocks for all of them (`fallocate(2)`), so that no
/// write through a mapping of it has a hole to fill: where the file system is full, filling one
/// kills the process with `SIGBUS`. Bytes already there are unchanged; new ones read as zeros.
/// A file system that cannot allocate ahead (`EOPNOTSUPP`), and systems other than Linux, get the
/// length alone (`set_len`, holes and all).
///
/// # Errors
/// [`Error::Io`] when the space is not there (`ENOSPC`, or a file size limit), saying how much
/// was asked for.
fn allocate(file: &File, len: u64, path: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::io::{Error as IoError, ErrorKind};
        use std::os::fd::AsRawFd;
        let n = libc::off_t::try_from(len).map_err(|_| {
            let e = IoError::new(
                ErrorKind::FileTooLarge,
                format!("a store of {len} bytes is too large"),
            );
            Error::io(path, e)
        })?;
        loop {
            // SAFETY: a system call on a descriptor that `file` keeps open; it reads and writes
            // no memory of ours.
            if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, n) } == 0 {
                return Ok(());
            }
            let e = IoError::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EOPNOTSUPP) => break,
                _ => {
                    let why = format!("cannot reserve the store's {len} bytes on disk: {e}");
                    return Err(Error::io(path, IoError::new(e.kind(), why)));
                }
            }
        }
    }
    if file.metadata().map_err(|e| Error::io(path, e))?.len() != len {
        file.set_len(len).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Tries to take `file`'s lock, shared or exclusive, without waiting: `false` when another open
/// of the file holds it in a conflicting mode.
fn try_flock(file: &File, shared: bool, path: &Path) -> Result<bool> {
    let got = if shared {
        file.try_lock_shared()
    } else {
        file.try_lock()
    };
    match got {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Which file an open file is, to tell one file from another whatever the paths that name them:
/// its device and inode (on other systems, its canonical path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileId(
    #[cfg(unix)] (u64, u64),
    #[cfg(not(unix))] std::path::PathBuf,
);

/// The [`FileId`] of `file`, opened at `path`; `None` when the system does not say.
pub(crate) fn file_id(file: &File, path: &Path) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let _ = path;
        let m = file.metadata().ok()?;
        Some(FileId((m.dev(), m.ino())))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.canonicalize().ok().map(FileId)
    }
}

/// The file at `path` opened for reading, if one exists.
pub(crate) fn open_existing(path: &Path) -> Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Whether a writer holds `file`'s lock (renaming a new file over a store that a writer has open
/// would leave that writer changing a file nobody can open again).
pub(crate) fn writer_holds(file: &File, path: &Path) -> Result<bool> {
    let free = try_flock(file, true, path)?;
    if free {
        let _ = file.unlock();
    }
    Ok(!free)
}

fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    if try_flock(file, false, path)? {
        Ok(())
    } else {
        Err(Error::Locked(path.to_path_buf()))
    }
}

/// Creates `path` (which must not exist) with `len` zero bytes (allocated: [`allocate`]), locks
/// it and maps it. On an error after the file was made (no space for it, too large to map), the
/// file is removed again.
pub(crate) fn create(path: &Path, len: u64) -> Result<Mapping> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let sized = lock_exclusive(&file, path)
        .and_then(|()| allocate(&file, len, path))
        .and_then(|()| {
            // SAFETY: we created the file and hold its exclusive lock; every writer of a store
            // takes that lock first, so nobody else writes or truncates the file while it is
            // mapped.
            unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io(path, e))
        });
    let map = sized.inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    advise_huge_pages(&map);
    Ok(Mapping::Write { map, file })
}

/// Asks the kernel to back the mapping with huge pages where it can (a hint; errors are ignored).
///
/// A batch touches each customer's record, journal entry and index slot at random: with 4 KiB
/// pages nearly every such access also misses the TLB (a 1M-customer store spans 65,000 pages),
/// and the page walks cost as much as the cache misses. With 2 MiB pages (transparent huge pages
/// for the page cache, where the file system and kernel support them) the TLB covers gigabytes.
///
/// `SB_HUGE_PAGES=0` in the environment leaves the hint out (see `docs/engine.md` for when 4 KiB
/// pages can be the better choice).
fn advise_huge_pages(map: &MmapMut) {
    if !huge_pages_wanted(std::env::var("SB_HUGE_PAGES").ok().as_deref()) {
        return;
    }
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// `len` bytes of private memory, zeros; pages get memory when first written.
///
/// No huge-page hint: a first copy of a 10M-customer store into hinted memory took 2.3-4.8 s
/// against 1.0-1.5 s into plain pages in alternated runs (README, Speed), probably because the
/// kernel compacts memory to find huge pages on a fault (`defrag` is `madvise` here; not
/// measured apart). A copy into memory it has written before
/// ([`crate::Engine::capture_snapshot_into`]) faults no pages at all.
///
/// # Errors
/// [`Error::Io`] (`OutOfMemory`, naming `path`, whose copy it is for) when the system refuses the
/// mapping.
pub(crate) fn anonymous(len: usize, path: &Path) -> Result<MmapMut> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_anon()
        .map_err(|e| {
            let why = format!("no memory for a copy of the store ({len} bytes): {e}");
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::OutOfMemory, why),
            )
        })
}

/// Whether `SB_HUGE_PAGES` (its value, if set) asks for the huge-page hint: anything but `0`.
fn huge_pages_wanted(var: Option<&str>) -> bool {
    var.is_none_or(|v| v.trim() != "0")
}

/// The length of `path`'s file and the file itself, opened for reading (and writing).
fn open_file(path: &Path, write: bool) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ));
    }
    Ok((file, meta.len()))
}

/// Opens an existing store for writing: takes the exclusive lock, then maps it. Files shorter than
/// `min_len` are refused before mapping.
pub(crate) fn open_write(path: &Path, min_len: u64) -> Result<Mapping> {
    let (file, len) = open_file(path, true)?;
    lock_exclusive(&file, path)?;
    if len < min_len {
        return Err(Error::bad_file(
            path,
            format!("truncated: {len} bytes, a store has at least {min_len}"),
        ));
    }
    // SAFETY: we hold the exclusive lock (see `create`), so no other writer maps or truncates it.
    let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io(path, e))?;
    advise_huge_pages(&map);
    Ok(Mapping::Write { map, file })
}

/// Opens an existing store read-only, without a lock.
pub(crate) fn open_read(path: &Path, min_len: u64) -> Result<Mapping> {
    let (file, len) = open_file(path, false)?;
    if len < min_len {
        return Err(Error::bad_file(
            path,
            format!("truncated: {len} bytes, a store has at least {min_len}"),
        ));
    }
    // SAFETY: the map is read-only; writers never shrink a store file (see the module docs), so the
    // mapped range stays backed by the file for the map's lifetime.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Mapping::Read { map, file })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{Mapping, create};

    /// The `VmFlags` line of the mapping of `path` in `/proc/self/smaps`.
    fn vm_flags(path: &std::path::Path) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let name = path.to_str()?;
        let mut in_map = false;
        for line in smaps.lines() {
            let is_header = line
                .split_whitespace()
                .next()
                .is_some_and(|a| a.contains('-') && !a.ends_with(':'));
            if is_header {
                in_map = line.ends_with(name);
            } else if in_map && line.starts_with("VmFlags:") {
                return Some(line.to_string());
            }
        }
        None
    }

    #[test]
    fn sb_huge_pages_zero_turns_the_hint_off() {
        assert!(super::huge_pages_wanted(None));
        assert!(super::huge_pages_wanted(Some("1")));
        assert!(!super::huge_pages_wanted(Some("0")));
        assert!(!super::huge_pages_wanted(Some(" 0 ")));
    }

    /// A store opened for writing is mapped with the huge-page hint (`hg` in the kernel's flags),
    /// on kernels built with transparent huge pages (elsewhere the hint is refused and ignored).
    #[test]
    fn write_mappings_ask_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("SKIP: this kernel has no transparent huge pages");
            return;
        }
        let dir = std::env::temp_dir().join(format!("sb-mmap-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.sb");
        let m = create(&path, 8 << 20).unwrap();
        assert!(matches!(m, Mapping::Write { .. }));
        let flags = vm_flags(&path).expect("the store's mapping in /proc/self/smaps");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "no huge-page hint: {flags}"
        );
        drop(m);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store that passes every check on its arguments but whose file cannot be made (here too
    /// large to size or to map: 2^31 slots of the largest recurrent state allowed, 512 TiB) is
    /// an error that leaves no file behind, so the same path can be created again; so is a
    /// create whose stale events file cannot be removed.
    #[test]
    fn a_create_that_fails_leaves_no_file() {
        use crate::{CreateOptions, Engine, EngineConfig, Error, Rate};
        let dir = std::env::temp_dir().join(format!("sb-mmap-create-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.sb");
        let cfg = EngineConfig::new(1_000, Rate::tokens_per_sec(10));
        let mut opts = CreateOptions::new(1 << 31, cfg).without_model();
        opts.state_dim = 1 << 16;
        match Engine::create(&path, opts) {
            Err(Error::Io { .. }) => {}
            other => panic!("a 512 TiB store: {:?}", other.map(|_| ())),
        }
        assert!(
            !path.exists(),
            "a failed create left {} behind",
            path.display()
        );
        Engine::create(&path, CreateOptions::new(8, cfg).without_model()).unwrap();

        // a directory where the stale events file would be: create fails, and leaves no store
        let path = dir.join("ev.sb");
        std::fs::create_dir_all(crate::predict::sidecar::path_for(&path).join("x")).unwrap();
        assert!(Engine::create(&path, CreateOptions::new(8, cfg).without_model()).is_err());
        assert!(
            !path.exists(),
            "a failed create left {} behind",
            path.display()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
