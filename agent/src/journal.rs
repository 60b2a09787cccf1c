//! The node's step journal: what the agent has finished, in its data directory.
//!
//! `journal.json` is the single source of truth for what the node did (ARCHITECTURE.md, agent
//! internals). A step is recorded when it is done, by rewriting the whole file atomically (temp
//! file, fsync, rename, fsync of the directory), so after a crash the file holds either the old
//! or the new state, never a torn one. A rerun skips recorded steps.
//!
//! Bundle steps belong to one bundle, identified by the SHA-256 of its `cks-manifest.json`:
//! when another bundle is installed (an upgrade), [`Journal::begin_bundle`] starts a fresh list
//! so every bundle step runs again. An unreadable journal is an error, never silently replaced:
//! forgetting that `kubeadm init` ran is worse than stopping.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use tracing::info;

/// File name of the journal in the data directory.
pub const JOURNAL_FILE: &str = "journal.json";
/// File name of the lock that keeps two agents from installing at once.
pub const LOCK_FILE: &str = "agent.lock";
/// Format version of [`JournalState`].
pub const JOURNAL_SCHEMA_VERSION: u32 = 1;

/// A step of the bundle installation, by its stable name (`agent.proto` `StepState.step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The bundle passed verification against its manifest and the node's architecture.
    BundleVerify,
    /// Binaries, CNI plugins, crictl, kubelet unit and drop-in, manifests installed.
    InstallBinaries,
    /// containerd's sandbox image set to the bundle's pause image.
    ContainerdSandboxImage,
    /// The bundle's images imported into containerd.
    ImagesImport,
}

impl Step {
    /// The bundle steps, in order.
    pub const BUNDLE_STEPS: [Step; 4] = [
        Step::BundleVerify,
        Step::InstallBinaries,
        Step::ContainerdSandboxImage,
        Step::ImagesImport,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::BundleVerify => "bundle.verify",
            Step::InstallBinaries => "install.binaries",
            Step::ContainerdSandboxImage => "containerd.sandbox_image",
            Step::ImagesImport => "images.import",
        }
    }
}

/// The journal's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalState {
    /// Always [`JOURNAL_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The bundle installed (or being installed), with its steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRecord>,
    /// Manifest digests of bundles installed before the current one, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_bundles: Vec<String>,
}

/// One bundle's installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// SHA-256 of its `cks-manifest.json`.
    pub manifest_sha256: String,
    /// Its Kubernetes version.
    pub kubernetes_version: String,
    /// Where it was found (`file:…`, `device:…`, `dir:…`).
    pub source: String,
    /// Steps done, in order.
    pub steps: Vec<StepRecord>,
}

/// A finished step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// [`Step::as_str`].
    pub step: String,
    /// Unix seconds when it was recorded.
    pub done_at_unix: i64,
    /// What was done, for people.
    pub detail: String,
}

/// Reading or writing the journal failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The data directory could not be created.
    #[error("failed to create data directory {path:?}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The journal could not be read.
    #[error("failed to read journal {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The journal is not valid JSON of a known version.
    #[error(
        "journal {path:?} is unreadable; it was not replaced. Inspect it, and move it away only \
         if this node may redo every step"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer agent.
    #[error(
        "journal {path:?} has schema_version {found}, this agent reads {JOURNAL_SCHEMA_VERSION}"
    )]
    UnsupportedSchema {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// The journal could not be written.
    #[error("failed to write journal {path:?}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another agent holds the lock.
    #[error("another cks-agent is working on this node (lock {path:?} is held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

/// The journal, loaded, with the node lock held.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    state: JournalState,
    _lock: Flock<File>,
}

impl Journal {
    /// Takes the node lock in `data_dir` and loads the journal (empty if there is none yet).
    ///
    /// # Errors
    /// [`JournalError`]: the directory cannot be created, another agent holds the lock, or the
    /// journal is unreadable (it is then left as it is).
    pub fn open(data_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(data_dir).map_err(|source| JournalError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| JournalError::Write {
                path: lock_path.clone(),
                source,
            })?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| JournalError::Locked { path: lock_path })?;
        let path = data_dir.join(JOURNAL_FILE);
        let state = Journal::peek(data_dir)?.unwrap_or(JournalState {
            schema_version: JOURNAL_SCHEMA_VERSION,
            ..JournalState::default()
        });
        Ok(Journal {
            path,
            state,
            _lock: lock,
        })
    }

    /// Reads the journal without the lock and without creating anything (`None` when there is
    /// none), for "is there anything to do?" before a bundle is verified.
    ///
    /// # Errors
    /// As [`Journal::open`], except `Locked` and `CreateDir`.
    pub fn peek(data_dir: &Path) -> Result<Option<JournalState>, JournalError> {
        let path = data_dir.join(JOURNAL_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let state: JournalState =
                    serde_json::from_slice(&bytes).map_err(|source| JournalError::Corrupt {
                        path: path.clone(),
                        source,
                    })?;
                if state.schema_version != JOURNAL_SCHEMA_VERSION {
                    return Err(JournalError::UnsupportedSchema {
                        path,
                        found: state.schema_version,
                    });
                }
                Ok(Some(state))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Read { path, source }),
        }
    }

    /// The content.
    pub fn state(&self) -> &JournalState {
        &self.state
    }

    /// Whether `step` is done for the bundle whose manifest digest is `manifest_sha256`.
    pub fn is_done(&self, manifest_sha256: &str, step: Step) -> bool {
        self.state.bundle.as_ref().is_some_and(|b| {
            b.manifest_sha256 == manifest_sha256 && b.steps.iter().any(|s| s.step == step.as_str())
        })
    }

    /// Whether every bundle step is done for that bundle.
    pub fn bundle_complete(&self, manifest_sha256: &str) -> bool {
        Step::BUNDLE_STEPS
            .iter()
            .all(|s| self.is_done(manifest_sha256, *s))
    }

    /// Makes `record`'s bundle the current one. If another bundle was current, its steps are
    /// kept only as history and every bundle step will run again. Persists the change.
    ///
    /// # Errors
    /// [`JournalError::Write`].
    pub fn begin_bundle(
        &mut self,
        manifest_sha256: &str,
        kubernetes_version: &str,
        source: &str,
    ) -> Result<(), JournalError> {
        match &self.state.bundle {
            Some(current) if current.manifest_sha256 == manifest_sha256 => return Ok(()),
            Some(current) => {
                info!(
                    previous = %current.manifest_sha256,
                    previous_version = %current.kubernetes_version,
                    new = %manifest_sha256,
                    new_version = %kubernetes_version,
                    "another bundle than the journaled one: its steps run again"
                );
                let previous = current.manifest_sha256.clone();
                self.state.previous_bundles.push(previous);
            }
            None => {}
        }
        self.state.bundle = Some(BundleRecord {
            manifest_sha256: manifest_sha256.to_string(),
            kubernetes_version: kubernetes_version.to_string(),
            source: source.to_string(),
            steps: Vec::new(),
        });
        self.save()
    }

    /// Records `step` as done for the current bundle and persists the journal.
    ///
    /// # Errors
    /// [`JournalError::Write`]. Recording without a current bundle is a programming error and
    /// is ignored with a log line.
    pub fn record_done(&mut self, step: Step, detail: &str) -> Result<(), JournalError> {
        let Some(bundle) = self.state.bundle.as_mut() else {
            tracing::error!(
                step = step.as_str(),
                "step recorded without a current bundle"
            );
            return Ok(());
        };
        bundle.steps.retain(|s| s.step != step.as_str());
        bundle.steps.push(StepRecord {
            step: step.as_str().to_string(),
            done_at_unix: now_unix(),
            detail: detail.to_string(),
        });
        self.save()
    }

    fn save(&self) -> Result<(), JournalError> {
        let mut bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|e| JournalError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
        bytes.push(b'\n');
        write_atomic(&self.path, &bytes, 0o600).map_err(|source| JournalError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename over
/// `path`, fsync of the directory.
///
/// # Errors
/// The I/O error; `path` is then unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no directory"))?;
    let mut temp = tempfile::Builder::new()
        .prefix(".cks-agent-")
        .tempfile_in(dir)?;
    temp.write_all(bytes)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaa";
    const B: &str = "bbbb";

    #[test]
    fn corrupt_journal_is_refused_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(JOURNAL_FILE), b"{ not json").expect("write");
        let err = Journal::open(dir.path()).expect_err("corrupt");
        assert!(matches!(err, JournalError::Corrupt { .. }), "{err:?}");
        assert_eq!(
            std::fs::read(dir.path().join(JOURNAL_FILE)).expect("read"),
            b"{ not json"
        );
    }

    #[test]
    fn newer_journal_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(JOURNAL_FILE), br#"{"schema_version": 9}"#).expect("w");
        let err = Journal::open(dir.path()).expect_err("newer");
        assert!(
            matches!(err, JournalError::UnsupportedSchema { found: 9, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn second_agent_is_locked_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = Journal::open(dir.path()).expect("first");
        let err = Journal::open(dir.path()).expect_err("second");
        assert!(matches!(err, JournalError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn steps_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut journal = Journal::open(dir.path()).expect("open");
            assert!(!journal.is_done(A, Step::BundleVerify));
            journal
                .begin_bundle(A, "1.33.1", "file:/x.iso")
                .expect("begin");
            journal
                .record_done(Step::BundleVerify, "ok")
                .expect("record");
            journal
                .record_done(Step::InstallBinaries, "ok")
                .expect("record");
        }
        let journal = Journal::open(dir.path()).expect("reopen");
        assert!(journal.is_done(A, Step::BundleVerify));
        assert!(journal.is_done(A, Step::InstallBinaries));
        assert!(!journal.is_done(A, Step::ImagesImport));
        assert!(!journal.bundle_complete(A));
        assert!(!journal.is_done(B, Step::BundleVerify), "other bundle");
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn another_bundle_restarts_the_bundle_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::open(dir.path()).expect("open");
        journal
            .begin_bundle(A, "1.33.1", "file:/a.iso")
            .expect("begin");
        for step in Step::BUNDLE_STEPS {
            journal.record_done(step, "ok").expect("record");
        }
        assert!(journal.bundle_complete(A));
        journal
            .begin_bundle(A, "1.33.1", "file:/a.iso")
            .expect("same");
        assert!(journal.bundle_complete(A), "same bundle keeps its steps");

        journal
            .begin_bundle(B, "1.34.0", "file:/b.iso")
            .expect("upgrade");
        assert!(!journal.is_done(B, Step::BundleVerify));
        assert!(!journal.is_done(A, Step::BundleVerify));
        assert_eq!(journal.state().previous_bundles, vec![A.to_string()]);
    }

    #[test]
    fn atomic_write_replaces_content_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").expect("write");
        write_atomic(&path, b"new", 0o640).expect("atomic");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }
}
