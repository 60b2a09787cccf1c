//! The API objects of one cluster: the stand-in for etcd, shared by every API server, kubelet,
//! controller manager and kubeadm of the cluster, whatever node (process) they run on.
//!
//! One JSON file (`store.json`) in the cluster directory. Readers take a snapshot without a
//! lock (the file is only ever replaced by an atomic rename); writers serialise on an exclusive
//! `flock` of `store.lock`, re-read, change and rename a new file into place. Every change
//! bumps the store's resource version, which becomes the changed object's
//! `metadata.resourceVersion`, as etcd's revision does.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::write_atomic;

/// The objects file in a cluster directory.
pub const STORE_FILE: &str = "store.json";
/// The writers' lock file.
const LOCK_FILE: &str = "store.lock";

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read, locked or written.
    #[error("failed to use the object store {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what the store writes.
    #[error("the object store {path:?} is corrupt")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Every object, by resource (`pods`, `deployments.apps`) and `namespace/name` (`/name` for
/// cluster-scoped objects).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Objects {
    /// The last resource version handed out.
    pub resource_version: u64,
    /// resource → `namespace/name` → object.
    pub items: BTreeMap<String, BTreeMap<String, Value>>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `metadata.name` of an object ("" when missing).
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata.namespace` of an object ("" when cluster-scoped).
pub fn namespace_of(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata.uid` of an object.
pub fn uid_of(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

impl Objects {
    /// The object `namespace/name` of `resource`.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<&Value> {
        self.items.get(resource)?.get(&key(namespace, name))
    }

    /// Every object of `resource`, in one namespace or all (`None`), sorted by namespace and name.
    pub fn list(&self, resource: &str, namespace: Option<&str>) -> Vec<&Value> {
        self.items
            .get(resource)
            .map(|m| {
                m.values()
                    .filter(|o| namespace.is_none_or(|ns| namespace_of(o) == ns))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Clones of every object of `resource` (for loops that change the store).
    pub fn snapshot(&self, resource: &str) -> Vec<Value> {
        self.list(resource, None).into_iter().cloned().collect()
    }

    /// Hands out the next resource version.
    pub fn next_resource_version(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Stores `obj` (creating or replacing), setting its resource version and, when missing,
    /// its uid and creation timestamp (`now`, Unix seconds). Returns the stored object.
    pub fn put(&mut self, resource: &str, mut obj: Value, now: u64) -> Value {
        let rv = self.next_resource_version();
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta["uid"] = json!(crate::ids::uid());
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!(crate::clock::rfc3339(now));
        }
        let k = key(namespace_of(&obj), name_of(&obj));
        self.items
            .entry(resource.to_string())
            .or_default()
            .insert(k, obj.clone());
        obj
    }

    /// Removes an object; the store's resource version moves on.
    pub fn remove(&mut self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let removed = self.items.get_mut(resource)?.remove(&key(namespace, name));
        if removed.is_some() {
            self.next_resource_version();
        }
        removed
    }
}

/// One cluster's object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in the cluster directory `dir`.
    pub fn new(dir: &Path) -> Store {
        Store {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    /// A consistent snapshot (no lock: the file is replaced atomically). Empty when no object
    /// was ever written.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn read(&self) -> Result<Objects, StoreError> {
        let path = self.file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Objects::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Runs `change` on the objects under the writers' lock; writes them back when it changed
    /// anything (whatever it returns).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or written; `change`'s own result is
    /// returned inside.
    pub fn update<T>(&self, change: impl FnOnce(&mut Objects) -> T) -> Result<T, StoreError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let mut objects = self.read()?;
        let before = objects.resource_version;
        let result = change(&mut objects);
        if objects.resource_version != before {
            let bytes = serde_json::to_vec(&objects).map_err(|source| StoreError::Corrupt {
                path: self.file(),
                source,
            })?;
            write_atomic(&self.file(), &bytes, 0o600).map_err(io(&self.file()))?;
        }
        drop(lock);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_versioned_and_visible_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        assert_eq!(store.read().unwrap(), Objects::default());
        let stored = store
            .update(|o| {
                o.put(
                    "pods",
                    json!({"metadata": {"name": "p", "namespace": "default"}}),
                    1_800_000_000,
                )
            })
            .unwrap();
        assert_eq!(stored["metadata"]["resourceVersion"], "1");
        assert_eq!(
            stored["metadata"]["creationTimestamp"],
            "2027-01-15T08:00:00Z"
        );
        let snapshot = store.read().unwrap();
        assert_eq!(snapshot.get("pods", "default", "p"), Some(&stored));
        assert_eq!(snapshot.list("pods", Some("kube-system")).len(), 0);
        // Nothing changed: nothing written.
        store
            .update(|o| o.get("pods", "default", "x").is_none())
            .unwrap();
        assert_eq!(store.read().unwrap().resource_version, 1);
        store.update(|o| o.remove("pods", "default", "p")).unwrap();
        assert!(store.read().unwrap().get("pods", "default", "p").is_none());
        assert_eq!(store.read().unwrap().resource_version, 2);
    }
}
