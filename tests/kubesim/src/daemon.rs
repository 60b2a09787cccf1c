//! What the long-running stand-ins (kube-apiserver, kube-controller-manager, kubelet) share:
//! logging, the runtime, and when to stop.
//!
//! They stop on SIGTERM or SIGINT, and also when their parent process goes away (a static pod
//! whose kubelet was killed must not outlive it), so no simulated node leaves processes behind.
//! None of them ever calls `setsid` or daemonizes: they stay in their parent's process group.

use std::future::Future;
use std::time::Duration;

/// How often a daemon checks that its parent is alive.
const PARENT_POLL: Duration = Duration::from_millis(500);

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

/// Completes on SIGTERM, SIGINT, or when the parent process changes (it died and the process
/// was re-parented).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let parent = std::os::unix::process::parent_id();
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let orphaned = async {
        loop {
            tokio::time::sleep(PARENT_POLL).await;
            if std::os::unix::process::parent_id() != parent {
                tracing::info!("parent process gone; stopping");
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
        () = orphaned => {}
        () = term => tracing::info!("SIGTERM; stopping"),
        () = int => tracing::info!("SIGINT; stopping"),
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
