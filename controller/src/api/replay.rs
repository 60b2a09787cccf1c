//! Signed requests that change something act once.
//!
//! A CloudStack signature stays valid until its `expires`: anyone who captures a signed
//! `deleteKubernetesCluster` (a proxy log, a browser history, a shared terminal) could send it
//! again until then. The endpoint remembers every state-changing request it accepted, by its
//! signature, until the request would have expired anyway, with the answer it gave; the same
//! request again gets that answer again and does nothing. A client that asks again (a retry
//! after a lost response, or the same command re-signed within the same second, which yields
//! the same signature) is answered as the first time; a replay acts no more than the original.
//! Reads (`list*`, `get*`, `queryAsyncJobResult`) are not remembered: they change nothing.
//!
//! The cache is bounded: entries leave when their request expires, and a full cache of live
//! entries refuses new state-changing requests (with a retryable error) rather than forgetting
//! one that could then act twice.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use time::OffsetDateTime;

/// Default bound on remembered requests.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The answer given to a request: HTTP status and body.
pub type Answer = (u16, String);

/// What to do with a state-changing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// First time: run it, then [`ReplayCache::answer`].
    Fresh,
    /// Seen before and answered: give the same answer, do nothing.
    Answered(Answer),
    /// Seen before and still running: ask again shortly.
    Running,
    /// Too many live requests are remembered to take another one now.
    Full,
}

#[derive(Debug)]
struct Entry {
    until: OffsetDateTime,
    answer: Option<Answer>,
}

/// Remembers accepted state-changing requests and their answers until they expire.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    seen: Mutex<HashMap<String, Entry>>,
}

// === impl ReplayCache ===

impl ReplayCache {
    /// An empty cache that remembers at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn key(api_key: &str, signature: &str) -> String {
        format!("{api_key}\n{signature}")
    }

    /// Admits the request signed `signature` by `api_key`, valid until `until`.
    pub fn admit(
        &self,
        api_key: &str,
        signature: &str,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Admission {
        let key = Self::key(api_key, signature);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = seen.get(&key).filter(|e| e.until >= now) {
            return match &entry.answer {
                Some(answer) => Admission::Answered(answer.clone()),
                None => Admission::Running,
            };
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, e| e.until >= now);
            if seen.len() >= self.capacity {
                return Admission::Full;
            }
        }
        seen.insert(
            key,
            Entry {
                until,
                answer: None,
            },
        );
        Admission::Fresh
    }

    /// Records the answer to an admitted request.
    pub fn answer(&self, api_key: &str, signature: &str, answer: Answer) {
        let key = Self::key(api_key, signature);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = seen.get_mut(&key) {
            entry.answer = Some(answer);
        }
    }

    /// Forgets an admitted request that got no answer (its handler was dropped: the client
    /// went away mid-request), so that asking again runs it rather than waiting for an answer
    /// that will never come. Whatever it began is then found by the operation's own
    /// idempotence (the engine answers a repeated operation with its running job).
    pub fn abandon(&self, api_key: &str, signature: &str) {
        let key = Self::key(api_key, signature);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.get(&key).is_some_and(|e| e.answer.is_none()) {
            seen.remove(&key);
        }
    }

    /// How many requests are remembered (expired ones included until the next purge).
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
    fn a_request_acts_once_and_is_answered_alike_until_it_expires() {
        let cache = ReplayCache::new(10);
        let now = OffsetDateTime::now_utc();
        let until = now + Duration::from_secs(60);
        assert_eq!(cache.admit("k", "sig", until, now), Admission::Fresh);
        assert_eq!(cache.admit("k", "sig", until, now), Admission::Running);
        cache.answer("k", "sig", (200, "{job}".into()));
        assert_eq!(
            cache.admit("k", "sig", until, now),
            Admission::Answered((200, "{job}".into()))
        );
        // Another key with the same signature text is another request.
        assert_eq!(cache.admit("k2", "sig", until, now), Admission::Fresh);
        // One abandoned unanswered may be asked again; an answered one stays.
        cache.abandon("k2", "sig");
        assert_eq!(cache.admit("k2", "sig", until, now), Admission::Fresh);
        cache.abandon("k", "sig");
        assert!(matches!(
            cache.admit("k", "sig", until, now),
            Admission::Answered(_)
        ));
        // Past its expiry the signature check refuses the request anyway; the slot is free.
        let later = until + Duration::from_secs(1);
        assert_eq!(cache.admit("k", "sig", later, later), Admission::Fresh);
    }

    #[test]
    fn a_full_cache_purges_expired_entries_and_refuses_when_all_are_live() {
        let cache = ReplayCache::new(2);
        let now = OffsetDateTime::now_utc();
        let soon = now + Duration::from_secs(1);
        let later = now + Duration::from_secs(600);
        assert_eq!(cache.admit("k", "a", soon, now), Admission::Fresh);
        assert_eq!(cache.admit("k", "b", later, now), Admission::Fresh);
        assert_eq!(cache.admit("k", "c", later, now), Admission::Full);
        let after_a = soon + Duration::from_secs(1);
        assert_eq!(cache.admit("k", "c", later, after_a), Admission::Fresh);
        assert_eq!(cache.len(), 2);
        // Still remembered: b was not purged to make room.
        assert_eq!(cache.admit("k", "b", later, after_a), Admission::Running);
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
