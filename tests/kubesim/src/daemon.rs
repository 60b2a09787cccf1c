//! What the long-running stand-ins (kube-apiserver, kube-controller-manager, kubelet) share:
//! logging, the runtime, when to stop, and the processes they manage.
//!
//! They stop on SIGTERM or SIGINT, and also when the node's root directory disappears (a node
//! whose disk is gone has no processes), so no simulated node leaves processes behind even when
//! only one process of it was killed. None of them ever calls `setsid` or daemonizes: they stay
//! in their parent's process group.

use std::future::Future;
use std::time::Duration;

/// How often a daemon checks that its node's root still exists.
const ROOT_POLL: Duration = Duration::from_millis(500);

/// Logs to stderr (`RUST_LOG`, default `info`), without colours.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs `future` on a small multi-threaded runtime.
///
/// # Panics
/// When the runtime cannot be created (no threads can be spawned at all).
pub fn block_on<F: Future>(future: F) -> F::Output {
    #[allow(clippy::expect_used)]
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        // Without threads and timers no daemon can run; there is nothing better to do.
        .expect("failed to start the tokio runtime");
    runtime.block_on(future)
}

/// Completes on SIGTERM, SIGINT, or when `root` (the node's root directory) disappears.
pub async fn shutdown_signal(root: std::path::PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let gone = async {
        loop {
            tokio::time::sleep(ROOT_POLL).await;
            if !root.exists() {
                tracing::info!(root = %root.display(), "the node's root is gone; stopping");
                return;
            }
        }
    };
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    let int = async {
        match int.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = gone => {}
        () = term => tracing::info!("SIGTERM; stopping"),
        () = int => tracing::info!("SIGINT; stopping"),
    }
}

/// The start time (clock ticks since boot) of the live, non-zombie process `pid`; with the pid
/// it identifies a process across pid reuse.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Stops the process `pid` that started at `started` (see [`process_start_time`]): SIGTERM,
/// then SIGKILL after `grace`. Blocking; returns at once when it is already gone.
pub fn stop_process(pid: u32, started: u64, grace: Duration) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else { return };
    if process_start_time(pid) != Some(started) {
        return;
    }
    let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if process_start_time(pid) != Some(started) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if process_start_time(pid) == Some(started) {
        let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
    }
}

/// An error and its sources, joined with `: ` (for messages printed by binaries).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
