//! Fault injection, configured at start or through `POST /sim/faults`.
//!
//! Every decision draws from one seeded generator in request order, so a test that sends the
//! same requests in the same order after setting the same seed sees the same faults. Every
//! injected fault is logged (tracing `warn`) and kept in [`Faults::log`].

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The fault configuration (the JSON body of `POST /sim/faults`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Seed of the random generator; setting a configuration restarts it.
    #[serde(default)]
    pub seed: u64,
    /// Per-command rules; the first rule whose `command` matches (case-insensitively, `*` for
    /// any) applies.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
    /// When true, every VM start fails with 533 (insufficient capacity).
    #[serde(default)]
    pub capacity_exhausted: bool,
}

/// Faults for one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// The API command, or `*`.
    pub command: String,
    /// Probability that the request fails before it acts.
    #[serde(default)]
    pub error_rate: f64,
    /// The error code used for injected errors (default 530).
    #[serde(default = "default_error_code")]
    pub error_code: u16,
    /// Delay before the request is handled, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// Probability that the response is lost after the command acted (the connection is
    /// aborted mid-body).
    #[serde(default)]
    pub lost_response_rate: f64,
    /// Probability that an async job the command starts ends failed (530) without acting.
    #[serde(default)]
    pub job_failure_rate: f64,
}

fn default_error_code() -> u16 {
    530
}

/// What the fault layer decided for one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Sleep this long first.
    pub latency_ms: u64,
    /// Fail with this error instead of acting.
    pub error: Option<ApiError>,
    /// Act, then lose the response.
    pub lose_response: bool,
    /// Any async job the command starts fails.
    pub fail_job: bool,
    /// Starts fail with 533.
    pub capacity_exhausted: bool,
}

/// One injected fault, as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Sequence number since the configuration was set.
    pub seq: u64,
    /// The API command.
    pub command: String,
    /// `latency`, `error`, `lost_response`, `job_failure` or `capacity_exhausted`.
    pub fault: String,
}

/// The fault layer's state.
#[derive(Debug, Default)]
pub struct Faults {
    config: FaultConfig,
    rng: SplitMix64,
    log: Vec<FaultEvent>,
}

// === impl Faults ===

impl Faults {
    /// Replaces the configuration, restarts the generator from the seed and clears the log.
    pub fn configure(&mut self, config: FaultConfig) {
        self.rng = SplitMix64(config.seed);
        self.config = config;
        self.log.clear();
    }

    /// The current configuration.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Faults injected since the configuration was set.
    pub fn log(&self) -> &[FaultEvent] {
        &self.log
    }

    /// Decides the faults for one request to `command`.
    pub fn decide(&mut self, command: &str) -> Decision {
        let mut decision = Decision {
            capacity_exhausted: self.config.capacity_exhausted,
            ..Decision::default()
        };
        let rule = self
            .config
            .rules
            .iter()
            .find(|r| r.command == "*" || r.command.eq_ignore_ascii_case(command))
            .cloned();
        if let Some(rule) = rule {
            decision.latency_ms = rule.latency_ms;
            if rule.latency_ms > 0 {
                self.record(command, "latency");
            }
            if self.draw(rule.error_rate) {
                self.record(command, "error");
                decision.error = Some(ApiError::injected(
                    rule.error_code,
                    format!("injected fault: {command} failed"),
                ));
                return decision;
            }
            decision.lose_response = self.draw(rule.lost_response_rate);
            if decision.lose_response {
                self.record(command, "lost_response");
            }
            decision.fail_job = self.draw(rule.job_failure_rate);
            if decision.fail_job {
                self.record(command, "job_failure");
            }
        }
        decision
    }

    /// Records a fault that took effect later (e.g. capacity exhaustion inside a job).
    pub fn record(&mut self, command: &str, fault: &str) {
        let seq = self.log.len() as u64;
        tracing::warn!(command, fault, seq, "injecting fault");
        self.log.push(FaultEvent {
            seq,
            command: command.to_owned(),
            fault: fault.to_owned(),
        });
    }

    fn draw(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.next_f64() < rate
    }
}

/// SplitMix64: small, fast, deterministic; plenty for fault decisions.
#[derive(Debug, Default, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seed: u64) -> FaultConfig {
        FaultConfig {
            seed,
            rules: vec![FaultRule {
                command: "listZones".into(),
                error_rate: 0.5,
                error_code: 530,
                latency_ms: 0,
                lost_response_rate: 0.0,
                job_failure_rate: 0.0,
            }],
            capacity_exhausted: false,
        }
    }

    fn pattern(faults: &mut Faults) -> Vec<bool> {
        (0..32)
            .map(|_| faults.decide("listzones").error.is_some())
            .collect()
    }

    #[test]
    fn same_seed_same_faults() {
        let mut faults = Faults::default();
        faults.configure(config(7));
        let first = pattern(&mut faults);
        faults.configure(config(7));
        assert_eq!(pattern(&mut faults), first);
        assert!(first.contains(&true) && first.contains(&false));
        faults.configure(config(8));
        assert_ne!(pattern(&mut faults), first);
    }

    #[test]
    fn unmatched_commands_are_untouched() {
        let mut faults = Faults::default();
        faults.configure(config(1));
        for _ in 0..10 {
            assert_eq!(faults.decide("listVirtualMachines"), Decision::default());
        }
        assert!(faults.log().is_empty());
    }
}
