//! Signed requests that change something are accepted once.
//!
//! A CloudStack signature stays valid until its `expires`: anyone who captures a signed
//! `deleteKubernetesCluster` (a proxy log, a browser history, a shared terminal) could send it
//! again and again until then. The endpoint remembers the signature of every state-changing
//! request it accepted until the request would have expired anyway, and refuses a second one.
//! Reads (`list*`, `get*`, `queryAsyncJobResult`) may be repeated: a client retrying a read is
//! normal and changes nothing.
//!
//! The cache is bounded: entries leave when their request expires, and a full cache of live
//! entries refuses new state-changing requests (with a retryable error) rather than forgetting
//! one that could then be replayed.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use time::OffsetDateTime;

/// Default bound on remembered signatures.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The same signed request was accepted before and has not expired.
    Seen,
    /// Too many live signatures are remembered to take another one now.
    Full,
}

/// Remembers accepted signatures until their request expires.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: Mutex<HashMap<String, OffsetDateTime>>,
}

// === impl ReplayCache ===

impl ReplayCache {
    /// An empty cache that remembers at most `capacity` signatures.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Admits the request signed `signature` by `api_key`, valid until `until`, once.
    ///
    /// # Errors
    /// [`Replay::Seen`] when it was admitted before; [`Replay::Full`] when the cache cannot
    /// remember it.
    pub fn admit(
        &self,
        api_key: &str,
        signature: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), Replay> {
        let key = format!("{api_key}\n{signature}");
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.get(&key).is_some_and(|expires| *expires >= now) {
            return Err(Replay::Seen);
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expires| *expires >= now);
            if seen.len() >= self.capacity {
                return Err(Replay::Full);
            }
        }
        seen.insert(key, until);
        Ok(())
    }

    /// How many signatures are remembered (expired ones included until the next purge).
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// Whether a command only reads: those may be sent again with the same signature.
pub fn is_read_only(command: &str) -> bool {
    let lower = command.to_ascii_lowercase();
    lower.starts_with("list") || lower.starts_with("get") || lower == "queryasyncjobresult"
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_signature_is_admitted_once_until_it_expires() {
        let cache = ReplayCache::new(10);
        let now = OffsetDateTime::now_utc();
        let until = now + Duration::from_secs(60);
        assert_eq!(cache.admit("k", "sig", until, now), Ok(()));
        assert_eq!(cache.admit("k", "sig", until, now), Err(Replay::Seen));
        // Another key with the same signature text is another request.
        assert_eq!(cache.admit("k2", "sig", until, now), Ok(()));
        // Past its expiry the request is refused by the signature check anyway; the slot is
        // free again.
        let later = until + Duration::from_secs(1);
        assert_eq!(cache.admit("k", "sig", later, later), Ok(()));
    }

    #[test]
    fn a_full_cache_purges_expired_entries_and_refuses_when_all_are_live() {
        let cache = ReplayCache::new(2);
        let now = OffsetDateTime::now_utc();
        let soon = now + Duration::from_secs(1);
        let later = now + Duration::from_secs(600);
        cache.admit("k", "a", soon, now).expect("a");
        cache.admit("k", "b", later, now).expect("b");
        assert_eq!(cache.admit("k", "c", later, now), Err(Replay::Full));
        let after_a = soon + Duration::from_secs(1);
        assert_eq!(cache.admit("k", "c", later, after_a), Ok(()));
        assert_eq!(cache.len(), 2);
        // Still remembered: b was not purged to make room.
        assert_eq!(cache.admit("k", "b", later, after_a), Err(Replay::Seen));
    }

    #[test]
    fn reads_may_repeat() {
        for read in [
            "listKubernetesClusters",
            "getKubernetesClusterConfig",
            "queryAsyncJobResult",
        ] {
            assert!(is_read_only(read), "{read}");
        }
        for write in [
            "deleteKubernetesCluster",
            "scaleKubernetesCluster",
            "updateConfiguration",
        ] {
            assert!(!is_read_only(write), "{write}");
        }
    }
}
