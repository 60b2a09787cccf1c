//! Fault injection, configured at start or through `POST /sim/faults`.
//!
//! Every decision draws from one seeded generator in request order, so a test that sends the
//! same requests in the same order after setting the same seed sees the same faults. Every
//! injected fault is logged (tracing `warn`) and kept in [`Faults::log`].
//!
//! Besides per-command faults, [`NeverBoot`] makes started VMs hang: the VM is Running in the
//! API (its start job succeeds) but its node never boots, so its agent never starts, as with a
//! template whose OS does not come up.

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
    /// VMs that never boot.
    #[serde(default)]
    pub never_boot: Option<NeverBoot>,
}

/// Which started VMs never boot: each start (deploy, start, reboot) of a VM whose name matches
/// `name_pattern` (every VM when absent) hangs with probability `rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeverBoot {
    /// Probability per start (default 1.0: every matching start hangs).
    #[serde(default = "always")]
    pub rate: f64,
    /// A VM name pattern; `*` matches any run of characters (`worker-*`).
    #[serde(default)]
    pub name_pattern: Option<String>,
}

fn always() -> f64 {
    1.0
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return name.is_empty(),
    };
    let Some(mut tail) = name.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return tail.is_empty();
    };
    for part in middle {
        match tail.find(part) {
            Some(at) => tail = &tail[at + part.len()..],
            None => return false,
        }
    }
    tail.ends_with(last)
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
    /// `latency`, `error`, `lost_response`, `job_failure`, `capacity_exhausted` or
    /// `never_boot`.
    pub fault: String,
    /// What the fault hit, when it is not the request itself (the VM name for `never_boot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
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

    /// Decides whether this start of VM `vm_name` (by `command`) never boots; a hit is logged.
    pub fn never_boot(&mut self, command: &str, vm_name: &str) -> bool {
        let Some(rule) = self.config.never_boot.clone() else {
            return false;
        };
        if rule
            .name_pattern
            .as_deref()
            .is_some_and(|pattern| !glob_matches(pattern, vm_name))
        {
            return false;
        }
        let hit = self.draw(rule.rate);
        if hit {
            self.record_on(command, "never_boot", Some(vm_name));
        }
        hit
    }

    /// Records a fault that took effect later (e.g. capacity exhaustion inside a job).
    pub fn record(&mut self, command: &str, fault: &str) {
        self.record_on(command, fault, None);
    }

    fn record_on(&mut self, command: &str, fault: &str, target: Option<&str>) {
        let seq = self.log.len() as u64;
        tracing::warn!(command, fault, seq, target, "injecting fault");
        self.log.push(FaultEvent {
            seq,
            command: command.to_owned(),
            fault: fault.to_owned(),
            target: target.map(str::to_owned),
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
            never_boot: None,
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
    fn glob_patterns_match_like_a_shell() {
        for (pattern, name, matches) in [
            ("*", "anything", true),
            ("worker-*", "worker-3", true),
            ("worker-*", "control-1", false),
            ("*-node-*", "k8s-node-2", true),
            ("k8s-*-1", "k8s-control-1", true),
            ("k8s-*-1", "k8s-control-2", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
        ] {
            assert_eq!(glob_matches(pattern, name), matches, "{pattern} vs {name}");
        }
    }

    #[test]
    fn never_boot_hits_matching_names_deterministically() {
        let mut faults = Faults::default();
        let config = FaultConfig {
            seed: 11,
            never_boot: Some(NeverBoot {
                rate: 0.5,
                name_pattern: Some("worker-*".into()),
            }),
            ..FaultConfig::default()
        };
        let run = |faults: &mut Faults| -> Vec<bool> {
            faults.configure(config.clone());
            (0..24)
                .map(|i| faults.never_boot("deployVirtualMachine", &format!("worker-{i}")))
                .collect()
        };
        let first = run(&mut faults);
        assert_eq!(run(&mut faults), first);
        assert!(first.contains(&true) && first.contains(&false), "{first:?}");
        assert!(!faults.never_boot("deployVirtualMachine", "control-1"));
        let hits = first.iter().filter(|h| **h).count();
        assert_eq!(faults.log().len(), hits);
        assert_eq!(faults.log()[0].fault, "never_boot");
        assert!(
            faults.log()[0]
                .target
                .as_deref()
                .unwrap()
                .starts_with("worker-")
        );
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
