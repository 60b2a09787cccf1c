//! A node's process tree, and how it is stopped as a whole.
//!
//! Every process a node starts gets its own process group and the environment variable
//! [`MARKER_ENV`]` = <sim prefix>/<vm id>`, which its descendants inherit. The stand-ins the agent
//! runs (kubeadm, kubelet, an API server) stay in the agent's process group and never call
//! `setsid`. A node's processes are therefore: the members of its children's process groups,
//! every process carrying its marker, and (with network namespaces) every process whose network
//! namespace is the node's. [`ProcessTree::stop`] sends SIGTERM to all of them, waits a bounded
//! time, then sends SIGKILL, and reaps its own children.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::netns;

/// Environment variable that marks a node's processes.
pub const MARKER_ENV: &str = "CLOUDSIM_NODE";
/// How often a stop looks whether the processes are gone.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for processes after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The processes one node started.
#[derive(Debug)]
pub struct ProcessTree {
    marker: String,
    netns_inode: Option<u64>,
    children: Vec<(String, Child)>,
}

/// One process of `/proc`, as far as stopping needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcInfo {
    pid: i32,
    pgrp: i32,
    zombie: bool,
}

// === impl ProcessTree ===

impl ProcessTree {
    /// An empty tree for the node marked `marker`, living in the network namespace `netns_inode`
    /// (`None` on loopback).
    pub fn new(marker: String, netns_inode: Option<u64>) -> Self {
        ProcessTree {
            marker,
            netns_inode,
            children: Vec::new(),
        }
    }

    /// The value of [`MARKER_ENV`] for this node.
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// Spawns `cmd` (in its own process group, marked) inside namespace `netns` when given.
    ///
    /// # Errors
    /// The namespace cannot be joined or the program cannot be started.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, netns: Option<&Path>) -> io::Result<u32> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).env(MARKER_ENV, &self.marker);
        let child = match netns {
            Some(ns) => netns::run_in(ns, move || cmd.spawn())?,
            None => cmd.spawn()?,
        };
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Children that exited since the last call, with their status (reaped).
    pub fn reap_exited(&mut self) -> Vec<(String, ExitStatus)> {
        let mut exited = Vec::new();
        self.children
            .retain_mut(|(name, child)| match child.try_wait() {
                Ok(Some(status)) => {
                    exited.push((name.clone(), status));
                    false
                }
                Ok(None) => true,
                Err(_) => false,
            });
        exited
    }

    /// Pids of every live process of the node (see the module documentation).
    pub fn pids(&self) -> Vec<i32> {
        let groups: Vec<i32> = self
            .children
            .iter()
            .filter_map(|(_, c)| i32::try_from(c.id()).ok())
            .collect();
        let in_netns = self.netns_inode.map(netns::pids_in).unwrap_or_default();
        let own = i32::try_from(std::process::id()).unwrap_or(0);
        netns::proc_pids()
            .filter(|&pid| pid != own)
            .filter_map(proc_info)
            .filter(|p| !p.zombie)
            .filter(|p| {
                groups.contains(&p.pgrp)
                    || in_netns.contains(&p.pid)
                    || has_marker(p.pid, &self.marker, false)
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Stops every process of the node: SIGTERM, up to `grace` for them to exit, then SIGKILL.
    /// Returns how many processes had to be killed.
    pub fn stop(&mut self, grace: Duration) -> usize {
        let groups: Vec<i32> = self
            .children
            .iter()
            .filter_map(|(_, c)| i32::try_from(c.id()).ok())
            .collect();
        for group in &groups {
            let _ = killpg(Pid::from_raw(*group), Signal::SIGTERM);
        }
        signal_all(&self.pids(), Signal::SIGTERM);
        if !self.wait_gone(grace) {
            let left = self.pids();
            tracing::warn!(node = %self.marker, count = left.len(), "processes ignored SIGTERM; killing them");
            for group in &groups {
                let _ = killpg(Pid::from_raw(*group), Signal::SIGKILL);
            }
            signal_all(&left, Signal::SIGKILL);
            self.wait_gone(KILL_WAIT);
            for (_, child) in &mut self.children {
                let _ = child.wait();
            }
            self.children.clear();
            return left.len();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
        self.children.clear();
        0
    }

    fn wait_gone(&mut self, within: Duration) -> bool {
        let rounds = within.as_millis() / POLL.as_millis() + 1;
        for _ in 0..rounds {
            self.reap_exited();
            if self.pids().is_empty() {
                return true;
            }
            std::thread::sleep(POLL);
        }
        self.reap_exited();
        self.pids().is_empty()
    }
}

/// Runs `cmd` to its end in a process group of its own (in namespace `netns` when given),
/// capturing its output; after `timeout` its group is killed and the run fails with
/// `TimedOut`. The caller sets the node's marker, so whatever the program leaves running
/// (a service it started) is found and stopped with the node.
///
/// # Errors
/// The program cannot be started or ran out of time.
pub fn run_to_end(
    mut cmd: Command,
    netns: Option<&Path>,
    timeout: Duration,
) -> io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = match netns {
        Some(ns) => netns::run_in(ns, move || cmd.spawn())?,
        None => cmd.spawn()?,
    };
    let group = i32::try_from(child.id()).unwrap_or(0);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("cloudsim-oneshot".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })?;
    match rx.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            // The child is not reaped yet (its waiter still holds it), so the group id is
            // still ours.
            if group > 0 {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("still running after {timeout:?}; killed"),
            ))
        }
    }
}

fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// Reads `/proc/PID/stat`: the fields after the command name (which may hold spaces).
fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

/// Whether process `pid` carries `marker` (or, with `prefix`, a marker starting with it).
fn has_marker(pid: i32, marker: &str, prefix: bool) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let wanted = format!("{MARKER_ENV}={marker}");
    environ.split(|b| *b == 0).any(|entry| {
        if prefix {
            entry.starts_with(wanted.as_bytes())
        } else {
            entry == wanted.as_bytes()
        }
    })
}

/// Kills (SIGTERM, then SIGKILL after `grace`) every process whose marker starts with
/// `prefix`: the leftovers of a simulator that did not shut down cleanly. Returns how many
/// processes were found.
pub fn kill_marked(prefix: &str, grace: Duration) -> usize {
    let own = i32::try_from(std::process::id()).unwrap_or(0);
    let find = || -> Vec<i32> {
        netns::proc_pids()
            .filter(|&pid| pid != own)
            .filter_map(proc_info)
            .filter(|p| !p.zombie && has_marker(p.pid, prefix, true))
            .map(|p| p.pid)
            .collect()
    };
    let found = find();
    if found.is_empty() {
        return 0;
    }
    signal_all(&found, Signal::SIGTERM);
    let rounds = grace.as_millis() / POLL.as_millis() + 1;
    for _ in 0..rounds {
        if find().is_empty() {
            return found.len();
        }
        std::thread::sleep(POLL);
    }
    signal_all(&find(), Signal::SIGKILL);
    found.len()
}

/// Detaches every mount point at or below `dir` (deepest first), as a power-off drops a VM's
/// mounts; returns how many there were.
pub fn unmount_below(dir: &Path) -> usize {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in &points {
        if let Err(errno) = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %point.display(), %errno, "cannot detach a node's mount");
        }
    }
    points.len()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(name: &str) -> String {
        format!("cloudsim-unit-{}-{name}", std::process::id())
    }

    #[test]
    fn stop_ends_the_whole_group_including_grandchildren() {
        let mut tree = ProcessTree::new(marker("group"), None);
        let mut cmd = Command::new("sh");
        // A grandchild in the same group, and a parent that ignores nothing.
        cmd.args(["-c", "sleep 300 & sleep 300"]);
        tree.spawn("sh", cmd, None).unwrap();
        let mut seen = 0;
        for _ in 0..100 {
            seen = tree.pids().len();
            if seen >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(seen >= 2, "sh and its sleeps, saw {seen}");
        assert_eq!(tree.stop(Duration::from_secs(5)), 0, "SIGTERM was enough");
        assert!(tree.pids().is_empty());
    }

    #[test]
    fn processes_ignoring_sigterm_are_killed_and_escapees_are_found_by_marker() {
        let mut tree = ProcessTree::new(marker("stubborn"), None);
        let mut cmd = Command::new("sh");
        // `setsid` leaves the process group; the marker still finds it.
        cmd.args([
            "-c",
            "trap '' TERM; setsid sh -c \"trap '' TERM; sleep 300\" & sleep 300",
        ]);
        tree.spawn("sh", cmd, None).unwrap();
        for _ in 0..100 {
            if tree.pids().len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let killed = tree.stop(Duration::from_millis(200));
        assert!(killed >= 1, "{killed}");
        assert!(tree.pids().is_empty());
    }

    #[test]
    fn mount_paths_are_unescaped_and_foreign_mounts_left_alone() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unmount_below(dir.path()), 0);
        use cks_fixtures::skip::{Need, require};
        if !require("mounting a tmpfs", &[Need::Root]) {
            return;
        }
        let point = dir.path().join("vm/root/with space");
        std::fs::create_dir_all(&point).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&point)
            .status()
            .unwrap();
        assert!(mounted.success());
        assert_eq!(unmount_below(&dir.path().join("vm")), 1);
        assert_eq!(unmount_below(&dir.path().join("vm")), 0, "gone");
    }

    #[test]
    fn one_shot_programs_run_to_their_end_or_are_killed_in_time() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run_to_end(cmd, None, Duration::from_secs(10)).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        let mut slow = Command::new("sleep");
        slow.arg("300");
        let err = run_to_end(slow, None, Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn marked_leftovers_are_killed_by_prefix() {
        let prefix = marker("leftover");
        let mut child = Command::new("sleep")
            .arg("300")
            .env(MARKER_ENV, format!("{prefix}/vm-1"))
            .spawn()
            .unwrap();
        let mut found = 0;
        for _ in 0..50 {
            found = kill_marked(&prefix, Duration::from_secs(2));
            if found > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(found, 1);
        assert!(!child.wait().unwrap().success());
    }
}
