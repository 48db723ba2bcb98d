//! Settlements that could not be written yet, kept on local disk until they are.
//!
//! An answered request whose settlement fails (the database is down, the disk of
//! SQLite is full) must still be charged once the database is back, even if
//! tokengate restarts meanwhile. Each such settlement is appended to this instance's
//! spool file (`DATA_DIR/spool/INSTANCE.spool`, one JSON line each, fsynced before
//! anything else happens to it), retried from there, and replayed at start before
//! the holds of the previous run are released. Settling is idempotent per request
//! id, so a settlement written twice (once before a crash, once from the spool) is
//! charged once.
//!
//! The spool file is also the instance's lock: it is held with `flock` for the
//! process's life, so a second process that would use the same instance id on this
//! host is refused at start instead of releasing the first one's holds. The kernel
//! drops the lock when the process dies, however it dies. Spool files of instances
//! that are gone (their lock is free: a renamed host, a container recreated on the
//! same volume) are taken over at start.

use crate::ledger::{Outcome, Settlement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "another tokengate with the instance id {instance:?} is running on this host (it holds {path}); stop it, or give this one its own TOKENGATE_INSTANCE_ID"
    )]
    InstanceRunning { instance: String, path: String },
    #[error("the settlement spool {path} cannot be used: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One line of a spool file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    /// A settlement that still has to be written.
    Pending(Record),
    /// The settlement of this request id was written.
    Done(String),
}

/// A settlement as it is kept on disk.
#[derive(Clone, Serialize, Deserialize)]
struct Record {
    request_id: String,
    user_id: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    charge: i64,
    estimated: bool,
    outcome: String,
    status: u16,
    latency_ms: u64,
    ttfb_ms: Option<u64>,
}

impl Record {
    fn of(user_id: i64, s: &Settlement) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            request_id: s.request_id.clone(),
            user_id,
            prompt_tokens: s.prompt_tokens,
            completion_tokens: s.completion_tokens,
            charge: s.charge,
            estimated: s.estimated,
            outcome: s.outcome.as_str().to_owned(),
            status: s.status,
            latency_ms: ms(s.latency),
            ttfb_ms: s.ttfb.map(ms),
        }
    }

    fn settlement(&self) -> Settlement {
        Settlement {
            request_id: self.request_id.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            charge: self.charge,
            estimated: self.estimated,
            outcome: Outcome::parse(&self.outcome).unwrap_or(Outcome::Completed),
            status: self.status,
            latency: Duration::from_millis(self.latency_ms),
            ttfb: self.ttfb_ms.map(Duration::from_millis),
            // Replayed after its answer ended: no line to add to.
            can_carry_notice: false,
        }
    }
}

/// A settlement waiting in the spool.
#[derive(Clone)]
pub struct Spooled {
    pub user_id: i64,
    pub settlement: Settlement,
    /// False when it could not be written to disk (a full disk): it is retried
    /// while this process lives, and lost if it dies first.
    pub durable: bool,
}

/// This instance's spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Held open (and locked) for the process's life.
    file: File,
    pending: BTreeMap<String, Spooled>,
}

/// The folder under `dir` that holds every instance's spool.
pub fn folder(dir: &Path) -> std::path::PathBuf {
    dir.join("spool")
}

impl Spool {
    /// Opens and locks this instance's spool under `dir`, taking over the spools of
    /// instances that are gone. Fails when another live process holds this one.
    pub fn open(dir: &Path, instance: &str) -> Result<Self, SpoolError> {
        let folder = folder(dir);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| SpoolError::Io { path, source }
        };
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let path = folder.join(format!("{}.spool", file_name(instance)));
        let mut file =
            lock_path(&path)
                .map_err(io(&path))?
                .ok_or_else(|| SpoolError::InstanceRunning {
                    instance: instance.to_owned(),
                    path: path.display().to_string(),
                })?;
        // A line cut short by a crash while it was appended would swallow the next.
        drop_torn_tail(&mut file).map_err(io(&path))?;
        let mut pending = read_pending(&file).map_err(io(&path))?;
        // Spools left by instances that are gone (their lock is free) are taken over:
        // their settlements are appended here, durably, before their files go.
        let mut adopted = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(io(&folder))?.flatten() {
            let other = entry.path();
            if other == path || other.extension().is_none_or(|e| e != "spool") {
                continue;
            }
            let Ok(Some(orphan)) = lock_path(&other) else {
                continue; // a live instance's, or gone meanwhile
            };
            let theirs = read_pending(&orphan).map_err(io(&other))?;
            if !theirs.is_empty() {
                tracing::warn!(spool = %other.display(), settlements = theirs.len(), "taking over the settlements of an instance that is gone");
            }
            for (id, s) in theirs {
                if let std::collections::btree_map::Entry::Vacant(slot) = pending.entry(id) {
                    append(
                        &mut file,
                        &Line::Pending(Record::of(s.user_id, &s.settlement)),
                    )
                    .map_err(io(&path))?;
                    slot.insert(s);
                }
            }
            adopted.push((other, orphan));
        }
        if pending.is_empty() {
            file.set_len(0).map_err(io(&path))?;
        }
        file.sync_data().map_err(io(&path))?;
        for (other, orphan) in adopted {
            // Emptied first: a process that opened it before the unlink finds nothing
            // to take over twice.
            let _ = orphan.set_len(0);
            let _ = std::fs::remove_file(&other);
        }
        sync_dir(&folder);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State { file, pending }),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `s` until `done` is called for it, on disk (fsynced) before returning.
    /// Returns whether it reached the disk; when it did not (a full disk), it is
    /// still retried while this process lives.
    pub fn add(&self, user_id: i64, s: &Settlement) -> bool {
        let mut state = self.lock();
        let line = Line::Pending(Record::of(user_id, s));
        let durable = append(&mut state.file, &line)
            .and_then(|()| state.file.sync_data())
            .map_err(|e| {
                tracing::error!(request_id = %s.request_id, charge = s.charge, error = %e, spool = %self.inner.path.display(), "cannot write a settlement to the spool; it is retried while this process lives")
            })
            .is_ok();
        state.pending.insert(
            s.request_id.clone(),
            Spooled {
                user_id,
                settlement: s.clone(),
                durable,
            },
        );
        durable
    }

    /// The settlement of `request_id` is written: it leaves the spool. Not fsynced:
    /// should the line be lost, the settlement is replayed and found written.
    pub fn done(&self, request_id: &str) {
        let mut state = self.lock();
        if state.pending.remove(request_id).is_none() {
            return;
        }
        let written = if state.pending.is_empty() {
            state.file.set_len(0)
        } else {
            append(&mut state.file, &Line::Done(request_id.to_owned()))
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, spool = %self.inner.path.display(), "cannot update the spool; the settlement will be found written when replayed");
        }
    }

    /// Up to `limit` pending settlements, oldest request id first.
    pub fn pending(&self, limit: usize) -> Vec<Spooled> {
        self.lock().pending.values().take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An instance id as a file name: anything but letters, digits, `.`, `_` and `-`
/// becomes `_` (a `hostname:port` id has a colon).
fn file_name(instance: &str) -> String {
    let name: String = instance
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("_{name}")
    } else {
        name
    }
}

/// Opens `path` and locks it for this process, or `None` when another one holds it.
/// The file locked must still be the one at `path`: another process may have taken
/// it over and removed it between the open and the lock.
fn lock_path(path: &Path) -> std::io::Result<Option<File>> {
    use rustix::fs::{FlockOperation, flock, fstat, stat};
    loop {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let held = fstat(&file)?;
        match stat(path) {
            Ok(now) if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino) => {
                return Ok(Some(file));
            }
            // Removed or replaced meanwhile: open the file that is there now.
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Appends one line, or nothing: should the write fail part-way (a full disk), the
/// file is cut back, so that the next line is not glued to half of this one.
fn append(file: &mut File, line: &Line) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let before = file.metadata()?.len();
    file.write_all(&bytes).inspect_err(|_| {
        let _ = file.set_len(before);
    })
}

/// Cuts the file back to its last complete line.
fn drop_torn_tail(file: &mut File) -> std::io::Result<()> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.rewind()?;
    file.read_to_end(&mut bytes)?;
    if bytes.last().is_some_and(|b| *b != b'\n') {
        let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(
            bytes = bytes.len() - keep,
            "dropping a spool line cut short by a crash"
        );
        file.set_len(keep as u64)?;
    }
    Ok(())
}

/// The settlements a spool file still holds. A line cut short by a crash while it
/// was being appended is skipped: its settlement had not been acknowledged as kept.
fn read_pending(file: &File) -> std::io::Result<BTreeMap<String, Spooled>> {
    let mut reader = BufReader::new(file);
    reader.rewind()?;
    let mut pending = BTreeMap::new();
    for line in reader.lines() {
        let line = line?;
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Pending(r)) => {
                pending.insert(
                    r.request_id.clone(),
                    Spooled {
                        user_id: r.user_id,
                        settlement: r.settlement(),
                        durable: true,
                    },
                );
            }
            Ok(Line::Done(id)) => {
                pending.remove(&id);
            }
            Err(_) if line.trim().is_empty() => {}
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable spool line"),
        }
    }
    Ok(pending)
}

/// Makes a new or removed file in `dir` survive a power cut too.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settlement(id: &str, charge: i64) -> Settlement {
        Settlement {
            request_id: id.into(),
            prompt_tokens: 10,
            completion_tokens: charge - 10,
            charge,
            estimated: false,
            outcome: Outcome::Completed,
            status: 200,
            latency: Duration::from_millis(1500),
            ttfb: Some(Duration::from_millis(20)),
            can_carry_notice: false,
        }
    }

    #[test]
    fn what_is_added_survives_a_reopen_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), "host:8080").unwrap();
            assert!(spool.add(7, &settlement("a", 30)));
            assert!(spool.add(7, &settlement("b", 40)));
            spool.done("a");
        }
        let spool = Spool::open(dir.path(), "host:8080").unwrap();
        let pending = spool.pending(10);
        assert_eq!(pending.len(), 1);
        let s = &pending[0].settlement;
        assert_eq!(
            (s.request_id.as_str(), s.charge, pending[0].user_id),
            ("b", 40, 7)
        );
        assert_eq!(s.latency, Duration::from_millis(1500));
        spool.done("b");
        assert!(spool.is_empty());
        assert_eq!(std::fs::metadata(spool.path()).unwrap().len(), 0);
    }

    #[test]
    fn a_second_process_with_the_same_instance_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), "tokengate-1").unwrap();
        // flock locks belong to the open file: a second open conflicts even in one
        // process, as another process's would.
        let second = Spool::open(dir.path(), "tokengate-1");
        assert!(matches!(second, Err(SpoolError::InstanceRunning { .. })));
        assert!(Spool::open(dir.path(), "tokengate-2").is_ok());
    }

    #[test]
    fn spools_of_instances_that_are_gone_are_taken_over_once() {
        let dir = tempfile::tempdir().unwrap();
        let live = Spool::open(dir.path(), "live").unwrap();
        live.add(4, &settlement("y", 60));
        {
            let old = Spool::open(dir.path(), "old-host:8080").unwrap();
            old.add(3, &settlement("x", 50));
        }
        let new = Spool::open(dir.path(), "new-host:8080").unwrap();
        let ids: Vec<String> = new
            .pending(10)
            .into_iter()
            .map(|s| s.settlement.request_id)
            .collect();
        // The live instance's spool is locked: not taken.
        assert_eq!(ids, ["x"]);
        assert!(!dir.path().join("spool/old-host_8080.spool").exists());
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn a_line_cut_short_by_a_crash_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), "i").unwrap();
            spool.add(1, &settlement("ok", 20));
        }
        let path = dir.path().join("spool/i.spool");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"pending":{"request_id":"cut","#).unwrap();
        let spool = Spool::open(dir.path(), "i").unwrap();
        let ids: Vec<String> = spool
            .pending(10)
            .into_iter()
            .map(|s| s.settlement.request_id)
            .collect();
        assert_eq!(ids, ["ok"]);
    }
}
