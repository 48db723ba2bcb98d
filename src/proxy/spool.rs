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
//!
//! Beside it, on SQLite, the instance's **journal** (`INSTANCE.0.journal`,
//! `INSTANCE.1.journal`): every settlement is noted there, one line, before its
//! answer's last bytes leave, and its line let go once it is written to the
//! database or fsynced in the spool (`Spool::note`, `Noted::written`). A note is one
//! `write` to the page cache, not fsynced: it survives the process however it dies,
//! as SQLite's own commits do (`synchronous = NORMAL`), without waiting for the
//! write engine's next group commit. A start takes the journals' notes into the
//! spool and writes them (those written before are found so and charged once). A
//! file is emptied once every line in it has gone and it holds
//! `JOURNAL_EMPTY_BYTES`, and notes go to the other file while one grows past
//! `JOURNAL_TURN_BYTES`, so while the database keeps up a start replays at most a
//! few thousand lines.

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
    /// Absent from files an earlier release wrote: the charge counts as input.
    #[serde(default)]
    output_charge: i64,
    estimated: bool,
    outcome: String,
    status: u16,
    latency_ms: u64,
    ttfb_ms: Option<u64>,
    /// Absent from files an earlier release wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conversation: Option<String>,
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
            output_charge: s.output_charge,
            estimated: s.estimated,
            outcome: s.outcome.as_str().to_owned(),
            status: s.status,
            latency_ms: ms(s.latency),
            ttfb_ms: s.ttfb.map(ms),
            conversation: s.conversation.clone(),
        }
    }

    fn settlement(&self) -> Settlement {
        Settlement {
            request_id: self.request_id.clone(),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            charge: self.charge,
            output_charge: self.output_charge.clamp(0, self.charge.max(0)),
            estimated: self.estimated,
            outcome: Outcome::parse(&self.outcome).unwrap_or(Outcome::Completed),
            status: self.status,
            latency: Duration::from_millis(self.latency_ms),
            ttfb: self.ttfb_ms.map(Duration::from_millis),
            // Replayed after its answer ended: no line to add to.
            can_carry_notice: false,
            conversation: self.conversation.clone(),
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
    journal: Arc<Journal>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

/// A journal file grows to this before notes go to the other one (once that one's
/// settlements are all written): about a thousand lines.
const JOURNAL_TURN_BYTES: u64 = 256 * 1024;
/// A journal file whose settlements are all written is emptied once it holds this
/// much: emptying it after every settlement would cost a system call each.
const JOURNAL_EMPTY_BYTES: u64 = 32 * 1024;
/// How long a start waits for its own spool file while another process holds it.
/// A process starting at the same moment holds it for as long as it takes to see
/// whether it is an orphan's (a file just created is one until its owner locks it),
/// a few milliseconds; a live instance with the same id holds it for good.
const OWN_SPOOL_PATIENCE: Duration = Duration::from_secs(5);
/// How often a start that waits for its own spool tries the lock again.
const OWN_SPOOL_RETRY: Duration = Duration::from_millis(20);

/// Whether a settlement given to the spool is also in the journal.
enum Journaled {
    No,
    /// Its note, to let go once the spool has it on disk.
    Held(Noted),
    /// Its line stays in the journal until the next start.
    Kept,
}

/// The journal's two files.
struct Journal {
    paths: [PathBuf; 2],
    state: Mutex<JournalState>,
}

struct JournalState {
    files: [File; 2],
    /// Bytes in each file.
    len: [u64; 2],
    /// Settlements noted in each file and not written yet.
    unwritten: [usize; 2],
    /// The file new notes go to.
    current: usize,
    /// A line could not be cut back after a failed write: the next would be glued to
    /// it, so no more notes are taken (answers wait for their writes instead).
    broken: bool,
}

/// A settlement noted in the journal, until `written` says it is written to the
/// database or kept in the spool. Dropped without that (a bug dropped its write
/// before it ran), its line stays for the next start.
pub struct Noted {
    journal: Arc<Journal>,
    file: usize,
}

impl Noted {
    /// The settlement is written, or fsynced in the spool: its line may go.
    pub fn written(self) {
        let mut state = self.journal.lock();
        let f = self.file;
        state.unwritten[f] = state.unwritten[f].saturating_sub(1);
        if state.unwritten[f] == 0 && state.len[f] >= JOURNAL_EMPTY_BYTES {
            state.empty(f, &self.journal.paths[f]);
        }
    }
}

impl Journal {
    fn paths(folder: &Path, name: &str) -> [PathBuf; 2] {
        [0, 1].map(|i| folder.join(format!("{name}.{i}.journal")))
    }

    fn open(paths: [PathBuf; 2]) -> std::io::Result<Self> {
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(path)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        Ok(Self {
            paths,
            state: Mutex::new(JournalState {
                files,
                len: [0, 0],
                unwritten: [0, 0],
                current: 0,
                broken: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, JournalState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl JournalState {
    /// Empties file `f`, whose settlements are all written.
    fn empty(&mut self, f: usize, path: &Path) {
        match self.files[f].set_len(0) {
            Ok(()) => self.len[f] = 0,
            Err(e) => {
                tracing::warn!(error = %e, journal = %path.display(), "cannot empty the settlement journal; a start replays what it holds")
            }
        }
    }
}

struct State {
    /// Held open (and locked) for the process's life.
    file: File,
    pending: BTreeMap<String, Spooled>,
    /// Journal notes of pending settlements the spool could not fsync (a full
    /// disk): their lines stay until the settlement is written.
    notes: BTreeMap<String, Noted>,
}

/// The folder under `dir` that holds every instance's spool.
pub fn folder(dir: &Path) -> std::path::PathBuf {
    dir.join("spool")
}

impl Spool {
    /// Opens and locks this instance's spool under `dir`, taking over the spools of
    /// instances that are gone. Fails when another live process holds this one.
    pub fn open(dir: &Path, instance: &str) -> Result<Self, SpoolError> {
        Self::open_waiting(dir, instance, OWN_SPOOL_PATIENCE, || {})
    }

    /// `open`, waiting up to `patience` for this instance's spool while another
    /// process holds it (`waiting` is called each time it finds it held).
    fn open_waiting(
        dir: &Path,
        instance: &str,
        patience: Duration,
        mut waiting: impl FnMut(),
    ) -> Result<Self, SpoolError> {
        let folder = folder(dir);
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| SpoolError::Io { path, source }
        };
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
        let path = folder.join(format!("{}.spool", file_name(instance)));
        let deadline = std::time::Instant::now() + patience;
        let mut file = loop {
            if let Some(file) = lock_path(&path).map_err(io(&path))? {
                break file;
            }
            if std::time::Instant::now() >= deadline {
                return Err(SpoolError::InstanceRunning {
                    instance: instance.to_owned(),
                    path: path.display().to_string(),
                });
            }
            waiting();
            std::thread::sleep(OWN_SPOOL_RETRY);
        };
        // A line cut short by a crash while it was appended would swallow the next.
        drop_torn_tail(&mut file).map_err(io(&path))?;
        let mut pending = read_pending(&file).map_err(io(&path))?;
        // What the last run noted in its journal: kept here, durably, before the
        // journal is emptied.
        let journal_paths = Journal::paths(&folder, &file_name(instance));
        let mut journals = Vec::new();
        for journal in &journal_paths {
            adopt_journal(journal, &mut file, &mut pending).map_err(io(journal))?;
            journals.push(journal.clone());
        }
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
            let mut theirs = read_pending(&orphan).map_err(io(&other))?;
            let name = other.file_stem().map(|n| n.to_string_lossy().into_owned());
            for journal in name.iter().flat_map(|n| Journal::paths(&folder, n)) {
                if journal.exists() {
                    adopt_journal_into(&journal, &mut theirs).map_err(io(&journal))?;
                    journals.push(journal);
                }
            }
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
        for journal in &journals {
            // Empty, not removed: this instance's own are opened again below.
            if let Ok(f) = OpenOptions::new().write(true).open(journal) {
                f.set_len(0).map_err(io(journal))?;
            }
            if !journal_paths.contains(journal) {
                let _ = std::fs::remove_file(journal);
            }
        }
        for (other, orphan) in adopted {
            // Emptied first: a process that opened it before the unlink finds nothing
            // to take over twice.
            let _ = orphan.set_len(0);
            let _ = std::fs::remove_file(&other);
        }
        sync_dir(&folder);
        let journal = Journal::open(journal_paths.clone()).map_err(io(&journal_paths[0]))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State {
                    file,
                    pending,
                    notes: BTreeMap::new(),
                }),
            }),
            journal: Arc::new(journal),
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
        self.keep(user_id, s, Journaled::No)
    }

    /// As `add`, for a settlement noted in the journal: its line goes once the spool
    /// has it on disk, and stays until `done` when it does not (a full disk), so
    /// that it is not lost with the process either way.
    pub fn add_noted(&self, user_id: i64, s: &Settlement, noted: Noted) -> bool {
        self.keep(user_id, s, Journaled::Held(noted))
    }

    /// As `add`, for a settlement whose journal line stays until the next start
    /// (its note cannot be let go from here): not lost with the process either way.
    pub fn add_journaled(&self, user_id: i64, s: &Settlement) -> bool {
        self.keep(user_id, s, Journaled::Kept)
    }

    fn keep(&self, user_id: i64, s: &Settlement, journaled: Journaled) -> bool {
        let mut state = self.lock();
        let line = Line::Pending(Record::of(user_id, s));
        let fsynced = append(&mut state.file, &line)
            .and_then(|()| state.file.sync_data())
            .map_err(|e| {
                tracing::error!(request_id = %s.request_id, charge = s.charge, error = %e, spool = %self.inner.path.display(), "cannot write a settlement to the spool; it is retried while this process lives")
            })
            .is_ok();
        let durable = match journaled {
            Journaled::No => fsynced,
            Journaled::Kept => true,
            Journaled::Held(noted) if fsynced => {
                noted.written();
                true
            }
            Journaled::Held(noted) => {
                state.notes.insert(s.request_id.clone(), noted);
                true
            }
        };
        state.pending.insert(
            s.request_id.clone(),
            Spooled {
                user_id,
                settlement: s.clone(),
                durable,
            },
        );
        fsynced
    }

    /// Notes `s` in the journal: once this returns, the settlement is written at
    /// the next start should the process die before it is written to the database.
    /// `None` when it could not be (a full disk): the caller waits for the write.
    pub fn note(&self, user_id: i64, s: &Settlement) -> Option<Noted> {
        let mut line = match serde_json::to_vec(&Line::Pending(Record::of(user_id, s))) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot note a settlement");
                return None;
            }
        };
        line.push(b'\n');
        let mut state = self.journal.lock();
        if state.broken {
            return None;
        }
        let (now, other) = (state.current, 1 - state.current);
        if state.len[now] >= JOURNAL_TURN_BYTES && state.unwritten[other] == 0 {
            if state.len[other] > 0 {
                state.empty(other, &self.journal.paths[other]);
            }
            if state.len[other] == 0 {
                state.current = other;
            }
        }
        let f = state.current;
        let before = state.len[f];
        match state.files[f].write_all(&line) {
            Ok(()) => {
                state.len[f] += line.len() as u64;
                state.unwritten[f] += 1;
                Some(Noted {
                    journal: self.journal.clone(),
                    file: f,
                })
            }
            Err(e) => {
                // Cut back, so that the next line is not glued to half of this one.
                state.broken = state.files[f].set_len(before).is_err();
                tracing::warn!(request_id = %s.request_id, error = %e, journal = %self.journal.paths[f].display(), "cannot note a settlement in the journal; its answer waits for the database");
                None
            }
        }
    }

    /// Empties the journal's files whose settlements are all written: at a clean
    /// stop, so that the next start has nothing of them to replay.
    pub fn empty_journal(&self) {
        let mut state = self.journal.lock();
        for f in 0..2 {
            if state.unwritten[f] == 0 && state.len[f] > 0 {
                state.empty(f, &self.journal.paths[f]);
            }
        }
    }

    /// The journal's files, for tests and tools that look at what is on disk.
    pub fn journal_paths(&self) -> &[PathBuf; 2] {
        &self.journal.paths
    }

    /// The settlement of `request_id` is written: it leaves the spool. Not fsynced:
    /// should the line be lost, the settlement is replayed and found written.
    pub fn done(&self, request_id: &str) {
        let mut state = self.lock();
        if state.pending.remove(request_id).is_none() {
            return;
        }
        if let Some(noted) = state.notes.remove(request_id) {
            noted.written();
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

/// Takes the settlements a journal file noted into the spool `file` (and
/// `pending`), durably once the caller syncs it.
fn adopt_journal(
    journal: &Path,
    file: &mut File,
    pending: &mut BTreeMap<String, Spooled>,
) -> std::io::Result<()> {
    let mut noted = BTreeMap::new();
    adopt_journal_into(journal, &mut noted)?;
    for (id, s) in noted {
        if let std::collections::btree_map::Entry::Vacant(slot) = pending.entry(id) {
            append(file, &Line::Pending(Record::of(s.user_id, &s.settlement)))?;
            slot.insert(s);
        }
    }
    Ok(())
}

/// Reads the settlements a journal file noted into `pending`; a missing file notes
/// none.
fn adopt_journal_into(
    journal: &Path,
    pending: &mut BTreeMap<String, Spooled>,
) -> std::io::Result<()> {
    let file = match File::open(journal) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let noted = read_pending(&file)?;
    if !noted.is_empty() {
        tracing::info!(journal = %journal.display(), settlements = noted.len(), "writing the settlements a previous run noted in its journal");
    }
    for (id, s) in noted {
        pending.entry(id).or_insert(s);
    }
    Ok(())
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
            output_charge: charge - 10,
            estimated: false,
            outcome: Outcome::Completed,
            status: 200,
            latency: Duration::from_millis(1500),
            ttfb: Some(Duration::from_millis(20)),
            can_carry_notice: false,
            conversation: None,
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
        let patience = Duration::from_millis(100);
        let second = Spool::open_waiting(dir.path(), "tokengate-1", patience, || {});
        assert!(matches!(second, Err(SpoolError::InstanceRunning { .. })));
        assert!(Spool::open(dir.path(), "tokengate-2").is_ok());
    }

    /// Three replicas started at once on one host: each took the spool file another
    /// had just created, before its owner locked it, to see whether it was an
    /// orphan's, and the owner, finding it locked, refused to start as a duplicate.
    /// A start waits for its own spool instead, and gets it once let go.
    #[test]
    fn a_start_waits_for_its_spool_while_another_start_looks_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = folder(dir.path());
        std::fs::create_dir_all(&folder).unwrap();
        // Another process starting at the same moment, holding it.
        let looking = lock_path(&folder.join("replica-0.spool")).unwrap().unwrap();
        let (held, told) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        let start = std::thread::spawn(move || {
            Spool::open_waiting(&path, "replica-0", Duration::from_secs(60), move || {
                let _ = held.send(());
            })
        });
        told.recv().unwrap();
        drop(looking);
        let spool = start.join().unwrap().unwrap();
        spool.add(1, &settlement("z", 5));
        assert_eq!(spool.len(), 1);
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

    fn pending_ids(spool: &Spool) -> Vec<String> {
        spool
            .pending(usize::MAX)
            .into_iter()
            .map(|s| s.settlement.request_id)
            .collect()
    }

    fn journal_bytes(spool: &Spool) -> u64 {
        spool
            .journal_paths()
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum()
    }

    /// A process that dies with settlements noted and not written leaves them for
    /// the next start, which keeps them in the spool, once, and empties the journal.
    /// So does a note dropped without being written (a bug lost its write).
    #[test]
    fn settlements_noted_and_not_written_are_kept_by_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), "host:8080").unwrap();
            spool.note(7, &settlement("written", 30)).unwrap().written();
            std::mem::forget(spool.note(7, &settlement("lost-a", 40)).unwrap());
            drop(spool.note(8, &settlement("lost-b", 50)).unwrap());
        }
        let spool = Spool::open(dir.path(), "host:8080").unwrap();
        // The written one is among them too: replaying it finds it written.
        assert_eq!(pending_ids(&spool), ["lost-a", "lost-b", "written"]);
        let b = spool
            .pending(10)
            .into_iter()
            .find(|s| s.settlement.request_id == "lost-b");
        assert_eq!(b.map(|s| (s.user_id, s.settlement.charge)), Some((8, 50)));
        assert_eq!(journal_bytes(&spool), 0);
        drop(spool);
        let again = Spool::open(dir.path(), "host:8080").unwrap();
        assert_eq!(again.len(), 3, "kept once, not once per start");
    }

    /// Under a steady stream of settlements, a few always in flight, the journal
    /// stays within its two files' turn size, and is emptied once all are written.
    #[test]
    fn the_journal_stays_small_under_a_steady_stream() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "steady").unwrap();
        let mut in_flight = std::collections::VecDeque::new();
        let mut largest = 0;
        for i in 0..50_000 {
            in_flight.push_back(
                spool
                    .note(1, &settlement(&format!("r-{i:06}"), 30))
                    .unwrap(),
            );
            if in_flight.len() > 16 {
                in_flight.pop_front().unwrap().written();
            }
            largest = largest.max(journal_bytes(&spool));
        }
        assert!(
            largest <= 2 * JOURNAL_TURN_BYTES + 1024,
            "the journal grew to {largest} bytes"
        );
        in_flight.drain(..).for_each(Noted::written);
        assert!(journal_bytes(&spool) < JOURNAL_EMPTY_BYTES);
        // A clean stop empties it: the next start has nothing to replay.
        spool.empty_journal();
        assert_eq!(journal_bytes(&spool), 0);
        drop(spool);
        assert!(Spool::open(dir.path(), "steady").unwrap().is_empty());
    }

    /// A settlement the database refused and the spool could not fsync (a full
    /// disk) keeps its journal line until it is written.
    #[test]
    fn a_note_stays_until_the_spool_has_its_settlement_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "full").unwrap();
        let kept = spool.note(1, &settlement("kept", 30)).unwrap();
        // As if the spool's fsync had failed: the note is parked with it.
        spool.add(1, &settlement("kept", 30));
        spool.lock().notes.insert("kept".into(), kept);
        let noted_lines = || {
            spool
                .journal_paths()
                .iter()
                .map(|p| {
                    std::fs::read_to_string(p)
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .sum::<usize>()
        };
        // Fill the file past the size at which written notes are emptied.
        for i in 0..400 {
            spool
                .note(1, &settlement(&format!("w-{i}"), 30))
                .unwrap()
                .written();
        }
        assert!(
            noted_lines() > 0,
            "emptied with a settlement still unwritten"
        );
        spool.done("kept");
        spool.note(1, &settlement("next", 30)).unwrap().written();
        spool.empty_journal();
        assert_eq!(noted_lines(), 0);
    }

    #[test]
    fn the_journal_of_an_instance_that_is_gone_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        {
            let old = Spool::open(dir.path(), "old-host:8080").unwrap();
            std::mem::forget(old.note(3, &settlement("noted", 50)).unwrap());
        }
        let new = Spool::open(dir.path(), "new-host:8080").unwrap();
        assert_eq!(pending_ids(&new), ["noted"]);
        for i in 0..2 {
            let journal = dir.path().join(format!("spool/old-host_8080.{i}.journal"));
            assert!(!journal.exists(), "{}", journal.display());
        }
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
