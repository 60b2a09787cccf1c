//! Crash points: named places where the controller kills itself once, for the crash tests.
//!
//! `make test` proves that a controller killed at any step boundary of any operation, and at
//! each commit point of starting and finishing one, resumes every operation without doing
//! anything twice. To get there without racing a `kill -9` against the clock, the test starts
//! the controller with a *crash ledger* (`CKS_CRASH_LEDGER=<file>`): at every crash point not yet
//! in the ledger, the controller appends the point's name to the ledger (synced to disk) and
//! aborts the process on the spot — no destructors, no shutdown, exactly like SIGKILL. The test
//! restarts it; the next run passes that point and dies at the next new one.
//!
//! Without a ledger (every real deployment) a crash point is one relaxed atomic load.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

static LEDGER: OnceLock<PathBuf> = OnceLock::new();

/// Arms the crash points with the ledger at `path` (once per process; later calls are ignored).
pub fn arm(path: PathBuf) {
    let _ = LEDGER.set(path);
}

/// A crash point: when armed and `name` is not in the ledger yet, records it and aborts.
pub fn hit(name: &str) {
    let Some(path) = LEDGER.get() else {
        return;
    };
    let seen = std::fs::read_to_string(path).unwrap_or_default();
    if seen.lines().any(|line| line == name) {
        return;
    }
    let recorded = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            writeln!(file, "{name}")?;
            file.sync_all()
        });
    if let Err(err) = recorded {
        // Without a record the next run would die here again, forever: do not crash.
        tracing::error!(point = name, error = %err, "cannot record a crash point; not crashing");
        return;
    }
    eprintln!(
        "crash point {name}: aborting (test ledger {})",
        path.display()
    );
    std::process::abort();
}
