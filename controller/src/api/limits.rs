//! Per-caller request limits, so that one API key cannot take the controller's attention from
//! everyone else's, and floods cost nothing before they are counted.
//!
//! Each API key (as claimed by the request, before any look-up) of a command the controller
//! answers, and each client address of a command forwarded to CloudStack (whose caller only
//! CloudStack can verify, so a claimed key cannot spend someone else's budget), has a generic
//! cell rate budget: `per_second` sustained, `burst` at once. A request over it is refused with
//! CloudStack's 429 text without touching the store or CloudStack. The table is bounded: keys
//! whose budget is full again are forgotten first, and a table full of live keys refuses new
//! ones rather than growing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Default sustained rate per API key (CloudStack's default `api.throttling.max` is 25/s).
pub const DEFAULT_PER_SECOND: u32 = 20;
/// Default burst per API key.
pub const DEFAULT_BURST: u32 = 40;
/// Default sustained rate of CloudStack commands forwarded per client address (the UI issues
/// bursts of a dozen lists per page).
pub const DEFAULT_FORWARD_PER_SOURCE: u32 = 50;
/// Most keys tracked at once.
pub const MAX_KEYS: usize = 10_000;

/// A request refused by the limits: how long until one would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// Wait at least this long.
    pub retry_after: Duration,
}

// === impl Throttled ===

impl Throttled {
    /// The 429 answer: `why`, then CloudStack's "please retry after N ms." wording.
    pub fn refusal(self, why: &str) -> super::error::ApiError {
        super::error::ApiError::new(
            429,
            Some(9999),
            format!(
                "{why}, please retry after {} ms.",
                self.retry_after.as_millis().max(1)
            ),
        )
    }
}

/// Budgets per API key.
#[derive(Debug)]
pub struct CallerLimits {
    interval: Duration,
    tolerance: Duration,
    max_keys: usize,
    /// Key → theoretical arrival time of its next request.
    tat: Mutex<HashMap<String, Instant>>,
}

// === impl CallerLimits ===

impl CallerLimits {
    /// `per_second` sustained and `burst` at once for each key, at most `max_keys` tracked.
    pub fn new(per_second: u32, burst: u32, max_keys: usize) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        Self {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            max_keys,
            tat: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `key` at `now`.
    ///
    /// # Errors
    /// [`Throttled`] when the key is over its budget, or the table is full of live keys.
    pub fn admit(&self, key: &str, now: Instant) -> Result<(), Throttled> {
        let mut table = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        if !table.contains_key(key) && table.len() >= self.max_keys {
            // A key whose arrival time has passed has its whole burst back: forgetting it
            // changes nothing.
            table.retain(|_, tat| *tat > now);
            if table.len() >= self.max_keys {
                return Err(Throttled {
                    retry_after: self.interval,
                });
            }
        }
        let tat = table.get(key).map_or(now, |t| (*t).max(now));
        let earliest = tat.checked_sub(self.tolerance).unwrap_or(now);
        if earliest > now {
            return Err(Throttled {
                retry_after: earliest - now,
            });
        }
        table.insert(key.to_owned(), tat + self.interval);
        Ok(())
    }
}

impl Default for CallerLimits {
    fn default() -> Self {
        Self::new(DEFAULT_PER_SECOND, DEFAULT_BURST, MAX_KEYS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limits = CallerLimits::new(10, 3, 100);
        let now = Instant::now();
        for _ in 0..3 {
            limits.admit("a", now).expect("burst");
        }
        let refused = limits.admit("a", now).expect_err("over the burst");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        limits
            .admit("b", now)
            .expect("another key has its own budget");
        limits
            .admit("a", now + Duration::from_millis(100))
            .expect("one more after an interval");
    }

    #[test]
    fn the_table_stays_bounded() {
        let limits = CallerLimits::new(1, 1, 2);
        let now = Instant::now();
        limits.admit("a", now).expect("a");
        limits.admit("b", now).expect("b");
        assert!(limits.admit("c", now).is_err(), "full of live keys");
        // Once a and b have their budget back they are forgotten to make room.
        let later = now + Duration::from_secs(2);
        limits.admit("c", later).expect("room again");
        assert_eq!(limits.tat.lock().unwrap().len(), 1);
    }
}
