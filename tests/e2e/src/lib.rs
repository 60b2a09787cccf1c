//! Whole-system runs on local fixtures: `cks-demo` (`make demo`) and `cks-bench` (`make bench`).
//! Both drive the real `cks-isobuilder` binary as an operator would.

pub mod stack;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs `isobuilder` with `args`, inheriting the terminal; fails on a non-zero exit.
pub fn run(isobuilder: &Path, args: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(isobuilder)
        .args(args)
        .status()
        .with_context(|| format!("failed to run {}", isobuilder.display()))?;
    if !status.success() {
        bail!(
            "{} {} exited with {status}",
            isobuilder.display(),
            args.join(" ")
        );
    }
    Ok(started.elapsed())
}

/// Runs `isobuilder` with `args`, capturing stdout.
pub fn capture(isobuilder: &Path, args: &[&str]) -> Result<(String, Duration)> {
    let started = Instant::now();
    let out = Command::new(isobuilder)
        .args(args)
        .output()
        .with_context(|| format!("failed to run {}", isobuilder.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} exited with {}: {}",
            isobuilder.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        started.elapsed(),
    ))
}
