//! The data directory's lock, and the sealing key's rotation (`cks-controller reseal`).
//!
//! A controller holds an exclusive lock on `<data>/controller.lock` while it runs, so two
//! controllers never share a store, and a rotation never runs beside a controller that could
//! seal a secret with the old key behind its back.
//!
//! Rotation, offline and safe to interrupt at any point:
//! 1. a fresh key is written to `secrets.key.new` (0600, synced), or the one an interrupted
//!    run left there is taken up again;
//! 2. every sealed secret is opened with the current key and sealed with the new one, in one
//!    transaction (all or nothing);
//! 3. `secrets.key.new` is renamed over `secrets.key`.
//!
//! Run again after a crash between 2 and 3, the secrets already open with the new key and
//! are kept as they are; only the rename is left to do.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::seal::{SealError, Sealer};
use crate::store::{SqliteStore, StoreError};

/// The data directory's lock file.
pub const LOCK_FILE: &str = "controller.lock";
/// The sealing key.
pub const KEY_FILE: &str = "secrets.key";
/// The key a rotation is moving to.
pub const NEW_KEY_FILE: &str = "secrets.key.new";

/// Why the data directory or the rotation failed.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    /// Another process holds the data directory.
    #[error("another cks-controller (serve or reseal) is using {0}; stop it first")]
    Locked(PathBuf),
    /// The lock file cannot be used.
    #[error("cannot lock the data directory with {path}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// There is no key to rotate.
    #[error("no sealing key at {0}: nothing to rotate (a controller makes one at its first start)")]
    NoKey(PathBuf),
    /// A key file is unusable.
    #[error(transparent)]
    Key(#[from] SealError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A secret opens with neither the current nor the new key.
    #[error(
        "the sealed secret {name} of cluster {cluster_id} opens with neither key; nothing was changed"
    )]
    Unreadable {
        /// Its cluster.
        cluster_id: String,
        /// Its name.
        name: String,
    },
    /// The new key could not replace the old one.
    #[error("cannot move {from} over {to}")]
    Rename {
        /// The new key.
        from: PathBuf,
        /// The key file.
        to: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive lock on a data directory, released when dropped (or when the process ends,
/// however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

// === impl DataDirLock ===

impl DataDirLock {
    /// Locks `data` (which must exist).
    ///
    /// # Errors
    /// [`ResealError::Locked`] when another process holds it.
    pub fn acquire(data: &Path) -> Result<DataDirLock, ResealError> {
        let path = data.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| ResealError::LockFile {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(ResealError::Locked(data.to_path_buf())),
            Err(TryLockError::Error(source)) => Err(ResealError::LockFile { path, source }),
        }
    }
}

/// Rotates the sealing key of the (stopped) controller whose data directory is `data`;
/// returns how many secrets were re-sealed.
///
/// # Errors
/// [`ResealError`]; on any error before the rename, the store and the key are as they were.
pub fn reseal(data: &Path) -> Result<usize, ResealError> {
    let _lock = DataDirLock::acquire(data)?;
    let key_path = data.join(KEY_FILE);
    if !key_path.exists() {
        return Err(ResealError::NoKey(key_path));
    }
    let current = Sealer::load_or_create(&key_path)?;
    let new_path = data.join(NEW_KEY_FILE);
    let new = Sealer::load_or_create(&new_path)?;
    let store = SqliteStore::open(&data.join("state.db"))?;
    let count = store.reseal_secrets(|cluster_id, name, sealed| {
        match current.open(cluster_id, name, sealed) {
            Ok(plain) => Ok(new.seal(cluster_id, name, &plain)),
            // Re-sealed by a run that stopped before the rename.
            Err(_) if new.open(cluster_id, name, sealed).is_ok() => Ok(sealed.to_vec()),
            Err(_) => Err(ResealError::Unreadable {
                cluster_id: cluster_id.to_owned(),
                name: name.to_owned(),
            }),
        }
    })?;
    drop(store);
    std::fs::rename(&new_path, &key_path).map_err(|source| ResealError::Rename {
        from: new_path.clone(),
        to: key_path.clone(),
        source,
    })?;
    // The rename is durable once the directory is.
    if let Ok(dir) = File::open(data) {
        let _ = dir.sync_all();
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store as _;

    fn stocked(dir: &Path) -> Vec<u8> {
        let store = SqliteStore::open(&dir.join("state.db")).expect("store");
        let sealer = Sealer::load_or_create(&dir.join(KEY_FILE)).expect("key");
        for (cluster, name) in [("c1", "kubeconfig"), ("c2", "registry-password")] {
            let sealed = sealer.seal(cluster, name, format!("{cluster}:{name}").as_bytes());
            store.put_secret(cluster, name, &sealed).expect("put");
        }
        std::fs::read(dir.join(KEY_FILE)).expect("key bytes")
    }

    fn opens_with_current_key(dir: &Path) {
        let store = SqliteStore::open(&dir.join("state.db")).expect("store");
        let sealer = Sealer::load_or_create(&dir.join(KEY_FILE)).expect("key");
        for (cluster, name) in [("c1", "kubeconfig"), ("c2", "registry-password")] {
            let sealed = store.secret(cluster, name).expect("read").expect("kept");
            let plain = sealer.open(cluster, name, &sealed).expect("opens");
            assert_eq!(plain, format!("{cluster}:{name}").into_bytes());
        }
    }

    #[test]
    fn every_secret_moves_to_a_fresh_key_and_the_old_one_is_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let old = stocked(dir.path());
        assert_eq!(reseal(dir.path()).expect("reseal"), 2);
        let key = std::fs::read(dir.path().join(KEY_FILE)).expect("key");
        assert_ne!(key, old, "a new key");
        assert!(!dir.path().join(NEW_KEY_FILE).exists());
        opens_with_current_key(dir.path());
        // And again: rotation is repeatable.
        assert_eq!(reseal(dir.path()).expect("again"), 2);
        opens_with_current_key(dir.path());
    }

    #[test]
    fn a_rotation_interrupted_after_its_transaction_finishes_when_run_again() {
        let dir = tempfile::tempdir().expect("dir");
        stocked(dir.path());
        // What a crash before the rename leaves: secrets sealed with secrets.key.new.
        {
            let current = Sealer::load_or_create(&dir.path().join(KEY_FILE)).expect("key");
            let new = Sealer::load_or_create(&dir.path().join(NEW_KEY_FILE)).expect("new");
            let store = SqliteStore::open(&dir.path().join("state.db")).expect("store");
            store
                .reseal_secrets::<ResealError>(|c, n, sealed| {
                    Ok(new.seal(c, n, &current.open(c, n, sealed).expect("open")))
                })
                .expect("transaction");
        }
        assert_eq!(reseal(dir.path()).expect("finish"), 2);
        opens_with_current_key(dir.path());
    }

    #[test]
    fn nothing_changes_beside_a_running_controller_or_with_an_unreadable_secret() {
        let dir = tempfile::tempdir().expect("dir");
        let old = stocked(dir.path());
        let held = DataDirLock::acquire(dir.path()).expect("lock");
        let err = reseal(dir.path()).expect_err("locked");
        assert!(matches!(err, ResealError::Locked(_)), "{err}");
        drop(held);
        // A secret no key opens: the transaction is rolled back, the key stays.
        let store = SqliteStore::open(&dir.path().join("state.db")).expect("store");
        store
            .put_secret("c3", "junk", b"not sealed at all")
            .expect("put");
        drop(store);
        let err = reseal(dir.path()).expect_err("unreadable");
        assert!(err.to_string().contains("c3"), "{err}");
        assert_eq!(std::fs::read(dir.path().join(KEY_FILE)).expect("key"), old);
        opens_with_current_key(dir.path());
    }

    #[test]
    fn a_missing_key_is_not_invented() {
        let dir = tempfile::tempdir().expect("dir");
        let err = reseal(dir.path()).expect_err("no key");
        assert!(matches!(err, ResealError::NoKey(_)), "{err}");
        assert!(!dir.path().join(KEY_FILE).exists());
    }
}
