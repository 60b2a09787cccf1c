//! Every program the agent runs (kubeadm, kubectl, ctr, systemctl) runs through
//! [`output_within`]: bounded by a limit of its own and by the deadline of the command being
//! executed, if any ([`with_deadline`]), and killed when either passes. A hung tool therefore
//! fails the command that ran it, with an error saying so, instead of holding the agent's one
//! command worker for ever.
//!
//! The deadline is per thread: the command worker runs each command on one blocking thread,
//! and every tool that command starts is started from that thread.

use std::cell::Cell;
use std::io::{self, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often a running program is looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long the output of a killed program is waited for (a grandchild may hold its pipes).
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

thread_local! {
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `deadline` as the deadline of every program it starts on this thread.
pub fn with_deadline<T>(deadline: Instant, f: impl FnOnce() -> T) -> T {
    let previous = DEADLINE.with(|d| d.replace(Some(deadline)));
    let out = f();
    DEADLINE.with(|d| d.set(previous));
    out
}

/// The error of a program killed at its limit: `io::ErrorKind::TimedOut`, naming it.
pub fn timed_out(program: &str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{program} did not finish within {after:?} and was killed"),
    )
}

/// The time `limit` leaves from now, cut to the thread's deadline.
pub fn remaining(limit: Duration) -> Duration {
    let now = Instant::now();
    let by_deadline = DEADLINE
        .with(Cell::get)
        .map_or(limit, |deadline| deadline.saturating_duration_since(now));
    limit.min(by_deadline)
}

/// Runs `command` as [`Command::output`] does (stdin null unless set, stdout and stderr
/// captured), killing it when `limit` or the thread's deadline passes.
///
/// # Errors
/// It cannot be started, or [`timed_out`] (`ErrorKind::TimedOut`).
pub fn output_within(command: &mut Command, limit: Duration) -> io::Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    let allowed = remaining(limit);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    match wait_until(&mut child, started + allowed)? {
        Some(status) => Ok(Output {
            status,
            stdout: stdout.recv().unwrap_or_default(),
            stderr: stderr.recv().unwrap_or_default(),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = stdout.recv_timeout(DRAIN_AFTER_KILL);
            let _ = stderr.recv_timeout(DRAIN_AFTER_KILL);
            Err(timed_out(&program, allowed))
        }
    }
}

/// Waits for `child` until `deadline`; `None` when it is still running then.
///
/// # Errors
/// Waiting failed.
pub fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> io::Result<Option<std::process::ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_finishes_gives_its_output() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_program_that_hangs_is_killed_at_its_limit() {
        let err = output_within(
            Command::new("sh").args(["-c", "exec sleep 600"]),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("sh did not finish"), "{err}");
    }

    #[test]
    fn the_thread_deadline_cuts_a_longer_limit() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let err = with_deadline(deadline, || {
            output_within(
                Command::new("sh").args(["-c", "exec sleep 600"]),
                Duration::from_secs(3600),
            )
        })
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Outside `with_deadline` only the limit applies.
        assert_eq!(remaining(Duration::from_secs(5)), Duration::from_secs(5));
    }
}
