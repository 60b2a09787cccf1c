//! Network namespaces: created, wired and deleted with iproute2 (`ip`), and sockets or
//! processes created *inside* one.
//!
//! A socket belongs to the network namespace of the thread that created it, and a child process
//! starts in the namespace of the thread that spawned it. [`run_in`] therefore runs a closure on
//! a fresh thread that first joins the namespace (`setns`), so no thread of a runtime pool ever
//! changes namespace; the socket or child it returns keeps the namespace, whichever thread uses
//! it later. This is how the simulator's userspace forwarders listen inside a node and connect
//! into a network without iptables.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sched::CloneFlags;

/// Where iproute2 keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A namespace or link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `ip` could not be run.
    #[error("failed to run `ip`; is iproute2 installed?")]
    SpawnIp(#[source] io::Error),
    /// `ip` ran and failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip {
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
}

/// The path of named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `ip args…`.
///
/// # Errors
/// [`NetnsError`] with `ip`'s message.
pub fn ip(args: &[&str]) -> Result<(), NetnsError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetnsError::SpawnIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetnsError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Creates namespace `name` with its loopback up.
///
/// # Errors
/// [`NetnsError`]; a half-made namespace is deleted again.
pub fn add(name: &str) -> Result<(), NetnsError> {
    ip(&["netns", "add", name])?;
    if let Err(err) = ip(&["-n", name, "link", "set", "lo", "up"]) {
        let _ = delete(name);
        return Err(err);
    }
    Ok(())
}

/// Deletes namespace `name` (its links go with it); absent is fine.
///
/// # Errors
/// [`NetnsError`].
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !path(name).exists() {
        return Ok(());
    }
    ip(&["netns", "delete", name])
}

/// Named namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a new thread that has joined the namespace at `ns` (a `/run/netns/NAME` path).
///
/// # Errors
/// The namespace cannot be opened or joined, or `f`'s error.
pub fn run_in<T, F>(ns: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = ns.to_path_buf();
    std::thread::Builder::new()
        .name("cloudsim-netns".into())
        .spawn(move || {
            let file = std::fs::File::open(&ns)?;
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
                io::Error::other(format!("failed to enter network namespace {ns:?}: {errno}"))
            })?;
            f()
        })?
        .join()
        .map_err(|_| io::Error::other("network namespace thread panicked"))?
}

/// A TCP listener on `addr` inside namespace `ns`.
///
/// # Errors
/// As [`run_in`], or the bind error.
pub fn bind(ns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    run_in(ns, move || TcpListener::bind(addr))
}

/// A TCP connection to `addr` made from inside namespace `ns`.
///
/// # Errors
/// As [`run_in`], or the connect error (after at most `timeout`).
pub fn connect(ns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    run_in(ns, move || TcpStream::connect_timeout(&addr, timeout))
}

/// The namespace identity (inode) of `ns`, as `/proc/PID/ns/net` shows it (`net:[INODE]`).
///
/// # Errors
/// The path cannot be examined.
pub fn inode(ns: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(ns)?.ino())
}

/// Pids of every process whose network namespace is `inode`.
pub fn pids_in(inode: u64) -> Vec<i32> {
    let wanted = format!("net:[{inode}]");
    proc_pids()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|link| link.as_os_str() == wanted.as_str())
        })
        .collect()
}

/// Every pid in `/proc`.
pub(crate) fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_ip_commands_report_their_arguments() {
        let err = ip(&["netns", "delete", "cloudsim-test-does-not-exist"]).expect_err("absent");
        match err {
            NetnsError::Ip { args, .. } => assert!(args.contains("does-not-exist"), "{args}"),
            // Without iproute2 the spawn error is the answer.
            NetnsError::SpawnIp(_) => {}
        }
    }

    #[test]
    fn missing_namespaces_cannot_be_entered() {
        let err = bind(
            Path::new("/run/netns/cloudsim-test-does-not-exist"),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .expect_err("absent");
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
