//! The database lock: an exclusive advisory lock on a file next to the database
//! (`<db>.lock`), held by a running server for its whole life and by the CLI's write commands
//! (`import`, `compact`) for theirs. It owns that file and nothing else; it touches no SQL.
//!
//! SQLite's own locking keeps every single transaction safe, but not an operator's intent:
//! the server keeps each document in memory and numbers its updates itself, so a row written
//! behind its back (an import, a pruned log) would be overwritten or ignored. Read commands
//! take no lock: in WAL mode they see a consistent view while the server writes.
//!
//! The lock is `flock`-style (`std::fs::File::try_lock`): the kernel drops it when the process
//! ends, however it ends, so a `kill -9` never leaves a stale lock behind. The holder writes its
//! pid into the file only to name itself in the refusal message; the file itself is never
//! removed (removing it would let two processes lock two different files).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held while alive; dropping it (or exiting) releases the lock.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the database is in use by a running yserve (pid {pid}): stop it first (lock file {path})", pid = pid_text(.pid))]
    Held { pid: Option<u32>, path: String },
    #[error("could not lock {path}: {message}")]
    Io { path: String, message: String },
}

fn pid_text(pid: &Option<u32>) -> String {
    pid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
}

/// The lock file of a database: the database path with `.lock` appended.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl DbLock {
    /// Takes the lock of `db` without waiting; `LockError::Held` names the holder's pid.
    pub fn acquire(db: &Path) -> Result<DbLock, LockError> {
        let path = lock_path(db);
        let io = |e: std::io::Error| LockError::Io { path: path.display().to_string(), message: e.to_string() };
        // Not truncated at open: until we hold the lock, the pid in it is the holder's.
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Held { pid: text.trim().parse().ok(), path: path.display().to_string() });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(DbLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let first = DbLock::acquire(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("x.db.lock"));
        match DbLock::acquire(&db) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        DbLock::acquire(&db).unwrap();
    }
}
