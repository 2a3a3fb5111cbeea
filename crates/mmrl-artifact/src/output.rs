//! Guarding an output path: what a writer may replace, who is writing it, and what writers that are gone left.
//!
//! A writer replaces only what it can prove is ours (an artifact, or an empty folder), holds a lock file beside
//! the output while it writes, and on start removes the partial directories of writers whose process is gone.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{ArtifactError, Result, io};
use crate::manifest::{FORMAT_VERSION, MANIFEST_FILE};
use crate::write::{PARTIAL_MARKER, work_dir};

/// Marker in the name of an older artifact moved aside while its replacement is renamed into place.
pub(crate) const OLD_MARKER: &str = ".old-";

/// Checks that a new artifact may replace `dest`: it is absent, an empty folder, or an artifact (a folder whose
/// `manifest.json` is a manifest of this format). Anything else (a file, a link, a user's folder) is an error
/// naming the path and what was found, so that no writer ever deletes what it did not write.
pub fn check_replaceable(dest: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("reading metadata of", dest)(e)),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    let found = if kind.is_symlink() {
        "a symbolic link".to_owned()
    } else if kind.is_file() {
        "a file".to_owned()
    } else if !kind.is_dir() {
        "something that is neither a file nor a folder".to_owned()
    } else {
        match manifest_format(dest) {
            Ok(()) => return Ok(()),
            Err(_) if is_empty_dir(dest)? => return Ok(()),
            Err(why) => format!("a folder that is not an artifact ({why})"),
        }
    };
    Err(ArtifactError::NotReplaceable {
        path: dest.to_path_buf(),
        found,
    })
}

/// `Ok` when `dir/manifest.json` is a manifest of this format; the reason otherwise. Hashes and files are not
/// checked: a damaged artifact is still ours to replace.
fn manifest_format(dir: &Path) -> std::result::Result<(), String> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no {MANIFEST_FILE}"));
        }
        Err(e) => return Err(format!("reading {MANIFEST_FILE}: {e}")),
    };
    let head: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{MANIFEST_FILE} is not JSON: {e}"))?;
    let version = head
        .get("format_version")
        .and_then(serde_json::Value::as_u64);
    if head.get("content_hash").is_none_or(|h| !h.is_string())
        || head.get("outputs").is_none_or(|o| !o.is_array())
    {
        return Err(format!("{MANIFEST_FILE} is not an mmrl manifest"));
    }
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(format!(
            "{MANIFEST_FILE} has format_version {}, not {FORMAT_VERSION}",
            version.map_or("none".to_owned(), |v| v.to_string())
        ));
    }
    Ok(())
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .next()
        .is_none())
}

/// The lock file of an output: `<parent>/.<name>.lock`.
pub(crate) fn lock_path(dest: &Path) -> PathBuf {
    work_dir(dest, "lock")
}

/// Lock files this process holds for as long as it runs (a stage binary claims its `--output` at start).
static CLAIMED: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

/// Lock files of the outputs that an [`ArtifactWriter`](crate::ArtifactWriter) of this process is writing.
static WRITING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The sets stay consistent even if a holder panicked: every update is a single insert or remove.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Claims `dest` for this process until it exits: the lock file beside it is taken now, so that a second
/// process writing the same output fails at its start, not after hours of work. An [`ArtifactWriter`] of this
/// process then writes `dest` under the claim.
///
/// [`ArtifactWriter`]: crate::ArtifactWriter
pub fn claim_output(dest: &Path) -> Result<()> {
    let lock = lock_key(dest)?;
    let mut claimed = guard(&CLAIMED);
    if claimed.iter().any(|(k, _)| *k == lock) {
        return Ok(());
    }
    let file = take_lock(&lock, dest)?;
    claimed.push((lock, file));
    Ok(())
}

/// The right of one writer to write an output, from [`ArtifactWriter::create`](crate::ArtifactWriter::create)
/// until commit or drop.
#[derive(Debug)]
pub(crate) struct OutputLock {
    key: PathBuf,
    /// The locked file, unless this process had claimed the output already.
    file: Option<File>,
}

impl OutputLock {
    /// Takes the lock of `dest`; another writer, in this process or another, is an error naming its pid.
    pub(crate) fn acquire(dest: &Path) -> Result<Self> {
        let key = lock_key(dest)?;
        if !guard(&WRITING).insert(key.clone()) {
            return Err(ArtifactError::Locked {
                dest: dest.to_path_buf(),
                lock: key,
                holder: Some(std::process::id()),
            });
        }
        let claimed = guard(&CLAIMED).iter().any(|(k, _)| *k == key);
        let file = if claimed {
            None
        } else {
            match take_lock(&key, dest) {
                Ok(file) => Some(file),
                Err(e) => {
                    guard(&WRITING).remove(&key);
                    return Err(e);
                }
            }
        };
        Ok(Self { key, file })
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Unlock before the output is free in this process, so a writer that sees it free can take the lock.
        drop(self.file.take());
        guard(&WRITING).remove(&self.key);
    }
}

/// The lock path of `dest` with its folder resolved, so that two spellings of one output share a lock.
fn lock_key(dest: &Path) -> Result<PathBuf> {
    let lock = lock_path(dest);
    // A bare relative name (`--output out`) has the empty path as its parent: that is the current folder.
    let parent = match lock.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let parent = parent.canonicalize().map_err(io("resolving", parent))?;
    Ok(match lock.file_name() {
        Some(name) => parent.join(name),
        None => lock,
    })
}

/// Opens and locks `lock` without waiting, and writes this process's id into it for the next one to report.
fn take_lock(lock: &Path, dest: &Path) -> Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .map_err(io("opening the lock file", lock))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            // The holder may not have written its pid yet; then it is reported as unknown.
            let _ = file.read_to_string(&mut text);
            return Err(ArtifactError::Locked {
                dest: dest.to_path_buf(),
                lock: lock.to_path_buf(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io("locking", lock)(e)),
    }
    file.set_len(0)
        .and_then(|()| file.write_all(std::process::id().to_string().as_bytes()))
        .map_err(io("writing", lock))?;
    Ok(file)
}

/// Cleans up after writers of `dest` whose process is gone: removes their `.NAME.partial-PID-NANOS`
/// directories, and of an older artifact they moved aside (`.NAME.old-PID`) either renames it back (when `dest`
/// is missing: the writer died between the two renames of its commit) or removes it. Every action is logged;
/// nothing of a live process, and nothing that is not an artifact, is touched.
pub(crate) fn clean_stale(dest: &Path) {
    let Some(name) = dest.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{name}");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let path = entry.path();
        if let Some(tag) = rest.strip_prefix(PARTIAL_MARKER) {
            remove_stale_partial(&path, tag);
        } else if let Some(Ok(pid)) = rest.strip_prefix(OLD_MARKER).map(str::parse) {
            recover_moved_aside(&path, pid, dest);
        }
    }
}

/// Removes a partial directory `.NAME.partial-PID-NANOS` whose writer is gone.
fn remove_stale_partial(path: &Path, tag: &str) {
    let Some((pid, nanos)) = tag.split_once('-') else {
        return;
    };
    let (Ok(pid), Ok(nanos)) = (pid.parse::<u32>(), nanos.parse::<u128>()) else {
        return;
    };
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if !is_dir || !writer_gone(pid, Some(nanos)) {
        return;
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            tracing::info!(dir = %path.display(), pid, "removed a stale partial directory: its writer is gone")
        }
        Err(e) => {
            tracing::warn!(dir = %path.display(), pid, error = %e, "could not remove a stale partial directory")
        }
    }
}

/// Restores or removes an artifact that a writer that is gone moved aside.
fn recover_moved_aside(path: &Path, pid: u32, dest: &Path) {
    if !writer_gone(pid, None) {
        return;
    }
    if manifest_format(path).is_err() {
        tracing::warn!(path = %path.display(), pid, "left in place: moved aside by a writer that is gone, but not an artifact");
        return;
    }
    let dest_missing = matches!(std::fs::symlink_metadata(dest), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    let (done, action) = if dest_missing {
        (
            std::fs::rename(path, dest),
            "restored the artifact a writer that is gone had moved aside",
        )
    } else {
        (
            std::fs::remove_dir_all(path),
            "removed an older artifact a writer that is gone had moved aside",
        )
    };
    match done {
        Ok(()) => tracing::info!(path = %path.display(), dest = %dest.display(), pid, "{action}"),
        Err(e) => {
            tracing::warn!(path = %path.display(), pid, error = %e, "could not clean up an artifact moved aside")
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on every Linux architecture).
const USER_HZ: u128 = 100;

/// A pid reused within this long of a partial directory's creation still counts as its writer (safe side):
/// boot time is known to the second only.
const START_SLACK_NANOS: u128 = 5_000_000_000;

/// Whether process `pid`, which created something at `created_nanos` (Unix time), has certainly exited: its
/// `/proc` entry is gone, it is a zombie, or the pid now belongs to a process started later. Without `/proc`, or
/// when anything is unclear, it is treated as alive.
fn writer_gone(pid: u32, created_nanos: Option<u128>) -> bool {
    if pid == std::process::id() || !Path::new("/proc/self/stat").exists() {
        return false;
    }
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    // Fields after the command name (which may hold spaces and parentheses): state is field 3, starttime 22.
    let Some(fields) = stat
        .rfind(')')
        .map(|i| stat[i + 1..].split_whitespace().collect::<Vec<_>>())
    else {
        return false;
    };
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return true;
    }
    let started = fields
        .get(19)
        .and_then(|t| t.parse::<u128>().ok())
        .zip(boot_time_secs());
    match (created_nanos, started) {
        (Some(created), Some((ticks, boot))) => {
            boot * 1_000_000_000 + ticks * 1_000_000_000 / USER_HZ > created + START_SLACK_NANOS
        }
        _ => false,
    }
}

fn boot_time_secs() -> Option<u128> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `path` made absolute, with the longest part that exists resolved through symbolic links, so that two
/// spellings of one folder compare equal even when the folder does not exist yet.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// How two paths overlap, after [`resolve`]: `Some("is the same folder as")` when they are one, `Some("contains")` when `a` holds
/// `b`, `Some("is inside")` when `b` holds `a`, `None` when neither holds the other.
pub fn overlap(a: &Path, b: &Path) -> Option<&'static str> {
    let (a, b) = (resolve(a), resolve(b));
    if a == b {
        Some("is the same folder as")
    } else if b.starts_with(&a) {
        Some("contains")
    } else if a.starts_with(&b) {
        Some("is inside")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_names_the_relation() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        let check = |a: &str, b: &str, expected: Option<&str>| {
            assert_eq!(overlap(&d.join(a), &d.join(b)), expected, "{a} vs {b}");
        };
        check("a", "a", Some("is the same folder as"));
        check("a/./b", "a/b", Some("is the same folder as"));
        check("a", "a/b", Some("contains"));
        check("a/b/c/new", "a", Some("is inside"));
        check("a/b", "ab", None);
        check("a/b", "a/c", None);
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.join("a/b"), d.join("link")).unwrap();
            check("link/x", "a/b", Some("is inside"));
        }
    }

    #[test]
    fn writer_gone_only_for_processes_that_are_certainly_gone() {
        assert!(!writer_gone(std::process::id(), Some(0)));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(writer_gone(pid, None));
        // A pid in use by a process that started long after the directory was made has been reused.
        assert!(writer_gone(1, Some(0)) || !Path::new("/proc/1/stat").exists());
        // ... and one in use since before it was made may still be its writer.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!writer_gone(sleeper.id(), Some(now + 10_000_000_000)));
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }
}
