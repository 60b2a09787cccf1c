//! The systemctl stand-in: the service manager a simulated node has, for the units the node's
//! software drives — `kubelet` (a real process, the kubelet stand-in) and `containerd`
//! (simulated: every request succeeds and is logged). Any other unit gets systemd's error and
//! exit code.
//!
//! # Contract
//! * Verbs: `daemon-reload`, `enable [--now]`, `disable [--now]`, `start`, `stop`, `restart`,
//!   `try-restart`, `is-active [--quiet]`, `is-enabled`, `status`, `--version`. Options
//!   `--quiet`/`-q`, `--no-block`, `--no-pager`, `--system`, `--force` are accepted.
//! * Exit codes as systemd's: 0; 1 for failures; 3 for `is-active`/`status` of an inactive
//!   unit; 5 "Unit … not found" for `start`/`stop`/`restart` of an unknown unit.
//! * Starting `kubelet` reads `kubelet.service` and its drop-ins
//!   (`kubelet.service.d/*.conf`) from `/etc/systemd/system`, `/run/systemd/system`,
//!   `/lib/systemd/system`, `/usr/lib/systemd/system` (under `KUBESIM_ROOT`) as systemd does:
//!   the last `ExecStart=` after a reset wins; `Environment=` and `EnvironmentFile=`
//!   (a leading `-` makes it optional) are read in order; `$VAR` alone is split into words,
//!   `${VAR}` is one word. The program (a node path) runs in the background with only that
//!   environment plus the few caller variables a simulated node needs
//!   ([`inherited_by_services`]; systemd passes none), stdin closed, output appended to `/var/log/kubesim/kubelet.log`,
//!   in the caller's process group (no `setsid`). Its pid and start time are in
//!   `/run/kubesim/kubelet.pid`; `stop` sends SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
//! * Every invocation is appended to `/var/log/kubesim/systemctl.log`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::env::NodeEnv;

/// Where unit files are searched (node paths, highest precedence first).
pub const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
/// The stand-in's state directory (node path).
pub const RUN_DIR: &str = "/run/kubesim";
/// The invocation log (node path).
pub const SYSTEMCTL_LOG: &str = "/var/log/kubesim/systemctl.log";
/// The kubelet's output (node path).
pub const KUBELET_LOG: &str = "/var/log/kubesim/kubelet.log";
/// How long `stop` waits after SIGTERM before SIGKILL (systemd's `TimeoutStopSec` is 90 s;
/// the kubelet stand-in stops in well under a second).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// `PATH` for services when the caller has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a run printed and its exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: impl Into<String>) -> Outcome {
        Outcome {
            code: 0,
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn fail(code: i32, stderr: impl Into<String>) -> Outcome {
        Outcome {
            code,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// A unit's `[Service]` settings that matter for starting it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// The unit file (host path).
    pub path: PathBuf,
    /// Drop-ins read, in order (host paths).
    pub drop_ins: Vec<PathBuf>,
    /// The effective `ExecStart=` command line.
    pub exec_start: Option<String>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=` entries: (node path, optional).
    pub environment_files: Vec<(String, bool)>,
}

/// Splits a line into words the way systemd does: whitespace separates, double and single
/// quotes group, backslash escapes.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    current.push(next);
                    in_word = true;
                }
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

impl Unit {
    /// Applies one unit file or drop-in's text.
    pub fn read_text(&mut self, text: &str) {
        let mut section = String::new();
        let mut joined = String::new();
        for raw in text.lines() {
            if let Some(head) = raw.strip_suffix('\\') {
                joined.push_str(head);
                joined.push(' ');
                continue;
            }
            joined.push_str(raw);
            let line = std::mem::take(&mut joined);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            if section != "Service" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "ExecStart" if value.is_empty() => self.exec_start = None,
                "ExecStart" => self.exec_start = Some(value.to_string()),
                "Environment" => {
                    for word in split_words(value) {
                        if let Some((k, v)) = word.split_once('=') {
                            self.environment.push((k.to_string(), v.to_string()));
                        }
                    }
                }
                "EnvironmentFile" => {
                    let (optional, path) = match value.strip_prefix('-') {
                        Some(p) => (true, p),
                        None => (false, value),
                    };
                    self.environment_files.push((path.to_string(), optional));
                }
                _ => {}
            }
        }
    }
}

/// `KEY=VALUE` lines of an environment file (comments, blank lines and quotes handled).
pub fn read_environment_file(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = split_words(value).join(" ");
        vars.push((key.trim().to_string(), value));
    }
    vars
}

fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Expands an `ExecStart=` line's words with `vars`: `$VAR` as a whole word becomes the value's
/// words (none when empty or unset), `${VAR}` anywhere becomes the value as is.
pub fn expand(words: &[String], vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for word in words {
        if let Some(name) = word.strip_prefix('$').filter(|n| is_var_name(n)) {
            if let Some(value) = vars.get(name) {
                out.extend(value.split_whitespace().map(str::to_string));
            }
            continue;
        }
        let mut expanded = String::new();
        let mut rest = word.as_str();
        while let Some(start) = rest.find("${") {
            expanded.push_str(&rest[..start]);
            match rest[start + 2..].find('}') {
                Some(end) => {
                    let name = &rest[start + 2..start + 2 + end];
                    expanded.push_str(vars.get(name).map_or("", String::as_str));
                    rest = &rest[start + 3 + end..];
                }
                None => {
                    expanded.push_str(&rest[start..]);
                    rest = "";
                }
            }
        }
        expanded.push_str(rest);
        out.push(expanded);
    }
    out
}

/// `kubelet` → `kubelet.service`.
fn unit_name(name: &str) -> String {
    if name.contains('.') {
        name.to_string()
    } else {
        format!("{name}.service")
    }
}

/// The systemctl stand-in on one node.
#[derive(Debug, Clone)]
pub struct Systemctl {
    env: NodeEnv,
    inherited: Vec<(OsString, OsString)>,
}

/// Which of the caller's variables a service gets (systemd gives it none of them; a simulated
/// node needs `PATH`, its `KUBESIM_*` variables except the version, and the simulator's
/// markers, `CLOUDSIM_*`, by which it finds a node's processes; `HOSTNAME` and `RUST_LOG`).
pub fn inherited_by_services(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    matches!(name.as_ref(), "PATH" | "RUST_LOG" | "HOSTNAME")
        || name.starts_with("CLOUDSIM_")
        || name.starts_with("KUBESIM_") && name != crate::env::ENV_VERSION
}

/// A managed unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Managed {
    /// A real process.
    Kubelet,
    /// Simulated: always succeeds.
    Containerd,
}

fn managed(unit: &str) -> Option<Managed> {
    match unit {
        "kubelet.service" => Some(Managed::Kubelet),
        "containerd.service" => Some(Managed::Containerd),
        _ => None,
    }
}

use crate::daemon::process_start_time;

impl Systemctl {
    /// The stand-in for `env`'s node; `inherited` are the caller's variables services get
    /// (see [`inherited_by_services`]).
    pub fn new(env: NodeEnv, inherited: Vec<(OsString, OsString)>) -> Systemctl {
        Systemctl { env, inherited }
    }

    fn log(&self, line: &str) {
        let path = self.env.host_path(SYSTEMCTL_LOG);
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }

    fn pid_file(&self) -> PathBuf {
        self.env.host_path(format!("{RUN_DIR}/kubelet.pid"))
    }

    fn wants_link(&self, unit: &str) -> PathBuf {
        self.env.host_path(format!(
            "/etc/systemd/system/multi-user.target.wants/{unit}"
        ))
    }

    /// Reads `unit` and its drop-ins; `None` when no unit file exists.
    pub fn load_unit(&self, unit: &str) -> Option<Unit> {
        let path = UNIT_DIRS
            .iter()
            .map(|d| self.env.host_path(format!("{d}/{unit}")))
            .find(|p| p.is_file())?;
        let mut result = Unit {
            path: path.clone(),
            ..Unit::default()
        };
        result.read_text(&std::fs::read_to_string(&path).unwrap_or_default());
        // Drop-ins from every directory, ordered by file name (later directories lose ties).
        let mut drop_ins: BTreeMap<String, PathBuf> = BTreeMap::new();
        for dir in UNIT_DIRS.iter().rev() {
            let d = self.env.host_path(format!("{dir}/{unit}.d"));
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.filter_map(Result::ok) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.ends_with(".conf") {
                        drop_ins.insert(name, e.path());
                    }
                }
            }
        }
        for path in drop_ins.into_values() {
            result.read_text(&std::fs::read_to_string(&path).unwrap_or_default());
            result.drop_ins.push(path);
        }
        Some(result)
    }

    /// The kubelet's pid when it is running.
    pub fn kubelet_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        let mut parts = text.split_whitespace();
        let pid: u32 = parts.next()?.parse().ok()?;
        let started: u64 = parts.next()?.parse().ok()?;
        (process_start_time(pid) == Some(started)).then_some(pid)
    }

    /// Runs one command line (without the program name).
    pub fn run(&self, args: &[String]) -> Outcome {
        self.log(&format!("systemctl {}", args.join(" ")));
        let mut now = false;
        let mut quiet = false;
        let mut words = Vec::new();
        for arg in args {
            match arg.as_str() {
                "--now" => now = true,
                "--quiet" | "-q" => quiet = true,
                "--no-block" | "--no-pager" | "--system" | "--force" | "-f"
                | "--no-ask-password" => {}
                "--version" => {
                    return Outcome::ok("systemd 252 (252.36-1~deb12u1)\n(kubesim stand-in)\n");
                }
                other if other.starts_with('-') => {
                    return Outcome::fail(1, format!("systemctl: unrecognized option '{other}'\n"));
                }
                other => words.push(other.to_string()),
            }
        }
        let Some((verb, units)) = words.split_first() else {
            return Outcome::fail(1, "Too few arguments.\n");
        };
        let units: Vec<String> = units.iter().map(|u| unit_name(u)).collect();
        if verb != "daemon-reload" && units.is_empty() {
            return Outcome::fail(1, "Too few arguments.\n");
        }
        let lock = self.lock();
        let outcome = match verb.as_str() {
            "daemon-reload" => Outcome::ok(""),
            "enable" => self.each(&units, |u| self.enable(u, now)),
            "disable" => self.each(&units, |u| self.disable(u, now)),
            "start" => self.each(&units, |u| self.start(u, "start")),
            "stop" => self.each(&units, |u| self.stop(u)),
            "restart" => self.each(&units, |u| self.restart(u)),
            "try-restart" => self.each(&units, |u| {
                if self.is_active(u) {
                    self.restart(u)
                } else {
                    Outcome::ok("")
                }
            }),
            "is-active" => self.each(&units, |u| {
                let active = self.is_active(u);
                let text = if active { "active\n" } else { "inactive\n" };
                Outcome {
                    code: if active { 0 } else { 3 },
                    stdout: if quiet { String::new() } else { text.into() },
                    stderr: String::new(),
                }
            }),
            "is-enabled" => self.each(&units, |u| self.is_enabled(u, quiet)),
            "status" => self.each(&units, |u| self.status(u)),
            other => Outcome::fail(1, format!("Unknown command verb '{other}'.\n")),
        };
        drop(lock);
        if outcome.code != 0 {
            self.log(&format!(
                "  -> exit {}: {}",
                outcome.code,
                outcome.stderr.trim()
            ));
        }
        outcome
    }

    /// Serialises systemctl invocations on the node (systemd's job queue).
    fn lock(&self) -> Option<std::fs::File> {
        let path = self.env.host_path(format!("{RUN_DIR}/systemctl.lock"));
        std::fs::create_dir_all(path.parent()?).ok()?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .ok()?;
        file.lock().ok()?;
        Some(file)
    }

    fn each(&self, units: &[String], mut f: impl FnMut(&str) -> Outcome) -> Outcome {
        let mut total = Outcome::default();
        for unit in units {
            let o = f(unit);
            total.stdout.push_str(&o.stdout);
            total.stderr.push_str(&o.stderr);
            if o.code != 0 && total.code == 0 {
                total.code = o.code;
            }
        }
        total
    }

    fn enable(&self, unit: &str, now: bool) -> Outcome {
        let Some(kind) = managed(unit) else {
            return Outcome::fail(
                1,
                format!("Failed to enable unit: Unit file {unit} does not exist.\n"),
            );
        };
        let mut out = Outcome::ok("");
        if kind == Managed::Kubelet {
            let Some(loaded) = self.load_unit(unit) else {
                return Outcome::fail(
                    1,
                    format!("Failed to enable unit: Unit file {unit} does not exist.\n"),
                );
            };
            let link = self.wants_link(unit);
            // The link points at a node path, so it dangles on the host: look at the link.
            if link.symlink_metadata().is_err() {
                if let Some(dir) = link.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let target = loaded
                    .path
                    .strip_prefix(&self.env.root)
                    .map(|p| Path::new("/").join(p))
                    .unwrap_or(loaded.path.clone());
                if let Err(err) = std::os::unix::fs::symlink(&target, &link) {
                    return Outcome::fail(1, format!("Failed to enable unit: {err}\n"));
                }
                out.stderr = format!(
                    "Created symlink /etc/systemd/system/multi-user.target.wants/{unit} → {}.\n",
                    target.display()
                );
            }
        } else {
            self.log(&format!("  {unit}: simulated, nothing to enable"));
        }
        if now {
            let started = self.start(unit, "start");
            out.code = started.code;
            out.stderr.push_str(&started.stderr);
        }
        out
    }

    fn disable(&self, unit: &str, now: bool) -> Outcome {
        if managed(unit).is_none() {
            return Outcome::fail(
                1,
                format!("Failed to disable unit: Unit file {unit} does not exist.\n"),
            );
        }
        let mut out = Outcome::ok("");
        let link = self.wants_link(unit);
        if std::fs::remove_file(&link).is_ok() {
            out.stderr =
                format!("Removed \"/etc/systemd/system/multi-user.target.wants/{unit}\".\n");
        }
        if now {
            let stopped = self.stop(unit);
            out.code = stopped.code;
            out.stderr.push_str(&stopped.stderr);
        }
        out
    }

    fn is_active(&self, unit: &str) -> bool {
        match managed(unit) {
            Some(Managed::Kubelet) => self.kubelet_pid().is_some(),
            Some(Managed::Containerd) => true,
            None => false,
        }
    }

    fn is_enabled(&self, unit: &str, quiet: bool) -> Outcome {
        if managed(unit).is_none() {
            return Outcome::fail(
                1,
                format!("Failed to get unit file state for {unit}: No such file or directory\n"),
            );
        }
        let enabled = managed(unit) == Some(Managed::Containerd)
            || self.wants_link(unit).symlink_metadata().is_ok();
        Outcome {
            code: if enabled { 0 } else { 1 },
            stdout: if quiet {
                String::new()
            } else if enabled {
                "enabled\n".into()
            } else {
                "disabled\n".into()
            },
            stderr: String::new(),
        }
    }

    fn status(&self, unit: &str) -> Outcome {
        let Some(kind) = managed(unit) else {
            return Outcome::fail(4, format!("Unit {unit} could not be found.\n"));
        };
        let active = self.is_active(unit);
        let pid = match kind {
            Managed::Kubelet => self
                .kubelet_pid()
                .map(|p| format!("\n   Main PID: {p}"))
                .unwrap_or_default(),
            Managed::Containerd => String::new(),
        };
        Outcome {
            code: if active { 0 } else { 3 },
            stdout: format!(
                "● {unit}\n     Loaded: loaded\n     Active: {}{pid}\n",
                if active {
                    "active (running)"
                } else {
                    "inactive (dead)"
                }
            ),
            stderr: String::new(),
        }
    }

    fn start(&self, unit: &str, verb: &str) -> Outcome {
        match managed(unit) {
            None => Outcome::fail(
                5,
                format!("Failed to {verb} {unit}: Unit {unit} not found.\n"),
            ),
            Some(Managed::Containerd) => {
                self.log(&format!("  {unit}: simulated {verb}"));
                Outcome::ok("")
            }
            Some(Managed::Kubelet) => {
                if self.kubelet_pid().is_some() {
                    return Outcome::ok("");
                }
                match self.spawn_kubelet(unit) {
                    Ok(pid) => {
                        self.log(&format!("  {unit}: started pid {pid}"));
                        Outcome::ok("")
                    }
                    Err(reason) => {
                        self.log(&format!("  {unit}: {reason}"));
                        if reason.contains("not found") {
                            Outcome::fail(
                                5,
                                format!("Failed to {verb} {unit}: Unit {unit} not found.\n"),
                            )
                        } else {
                            Outcome::fail(
                                1,
                                format!(
                                    "Job for {unit} failed because the control process exited with error code.\nSee \"systemctl status {unit}\" and \"journalctl -xeu {unit}\" for details.\n"
                                ),
                            )
                        }
                    }
                }
            }
        }
    }

    fn stop(&self, unit: &str) -> Outcome {
        match managed(unit) {
            None => Outcome::fail(
                5,
                format!("Failed to stop {unit}: Unit {unit} not loaded.\n"),
            ),
            Some(Managed::Containerd) => {
                self.log(&format!("  {unit}: simulated stop"));
                Outcome::ok("")
            }
            Some(Managed::Kubelet) => {
                if let Some(pid) = self.kubelet_pid() {
                    if let Some(started) = process_start_time(pid) {
                        crate::daemon::stop_process(pid, started, STOP_TIMEOUT);
                    }
                    self.log(&format!("  {unit}: stopped pid {pid}"));
                }
                let _ = std::fs::remove_file(self.pid_file());
                Outcome::ok("")
            }
        }
    }

    fn restart(&self, unit: &str) -> Outcome {
        let stopped = self.stop(unit);
        if stopped.code != 0 {
            return Outcome {
                stderr: stopped.stderr.replace("stop", "restart"),
                ..stopped
            };
        }
        self.start(unit, "restart")
    }

    /// Starts the unit's `ExecStart` in the background; returns its pid.
    fn spawn_kubelet(&self, unit: &str) -> Result<u32, String> {
        let loaded = self
            .load_unit(unit)
            .ok_or_else(|| format!("unit {unit} not found"))?;
        let line = loaded
            .exec_start
            .clone()
            .ok_or_else(|| format!("{unit} has no ExecStart= setting"))?;
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        let mut file_vars = Vec::new();
        for (k, v) in &loaded.environment {
            vars.insert(k.clone(), v.clone());
        }
        for (path, optional) in &loaded.environment_files {
            match std::fs::read_to_string(self.env.host_path(path)) {
                Ok(text) => file_vars.extend(read_environment_file(&text)),
                Err(_) if *optional => {}
                Err(err) => return Err(format!("failed to load environment file {path}: {err}")),
            }
        }
        // systemd applies Environment= and EnvironmentFile= in one pass, files last.
        for (k, v) in file_vars {
            vars.insert(k, v);
        }
        let words = expand(&split_words(&line), &vars);
        let Some((program, args)) = words.split_first() else {
            return Err("empty ExecStart=".into());
        };
        let program = program.trim_start_matches(['-', '@', ':', '+', '!']);
        if !program.starts_with('/') {
            return Err(format!(
                "ExecStart= program {program:?} is not an absolute path"
            ));
        }
        let host_program = self.env.host_path(program);
        if !host_program.is_file() {
            return Err(format!(
                "failed to locate executable {program}: No such file or directory"
            ));
        }
        let log_path = self.env.host_path(KUBELET_LOG);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("failed to open {KUBELET_LOG}: {e}"))?;
        let mut command = Command::new(&host_program);
        command
            .args(args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(self.inherited.iter().cloned())
            .envs(self.env.to_vars())
            .envs(&vars)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = command
            .spawn()
            .map_err(|e| format!("failed to execute {program}: {e}"))?;
        let pid = child.id();
        // The child is not waited for: it runs on after systemctl exits, as a service.
        drop(child);
        let started = process_start_time(pid).ok_or_else(|| format!("{program} exited at once"))?;
        crate::cluster::write_atomic(
            &self.pid_file(),
            format!("{pid} {started}\n").as_bytes(),
            0o644,
        )
        .map_err(|e| format!("failed to write the pid file: {e}"))?;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_systemd() {
        assert_eq!(
            split_words(r#"Environment="A=1 2" B=3 'C=x y'"#),
            ["Environment=A=1 2", "B=3", "C=x y"]
        );
        assert_eq!(split_words(r"a\ b c"), ["a b", "c"]);
    }

    #[test]
    fn exec_start_expands_variables_as_systemd_does() {
        let mut unit = Unit::default();
        unit.read_text("[Service]\nExecStart=/usr/bin/kubelet\nRestart=always\n");
        unit.read_text(crate::systemd::tests::DROP_IN);
        assert_eq!(
            unit.environment_files,
            [
                ("/var/lib/kubelet/kubeadm-flags.env".to_string(), true),
                ("/etc/default/kubelet".to_string(), true)
            ]
        );
        let mut vars: BTreeMap<String, String> = unit.environment.iter().cloned().collect();
        for (k, v) in read_environment_file(
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --hostname-override=cp-1\"\n# comment\n",
        ) {
            vars.insert(k, v);
        }
        let words = expand(&split_words(unit.exec_start.as_deref().unwrap()), &vars);
        assert_eq!(
            words,
            [
                "/opt/bin/kubelet",
                "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
                "--kubeconfig=/etc/kubernetes/kubelet.conf",
                "--config=/var/lib/kubelet/config.yaml",
                "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
                "--hostname-override=cp-1",
                "--root-dir=",
            ]
        );
    }

    const DROP_IN: &str = "[Service]\nEnvironment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"\nEnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\nEnvironmentFile=-/etc/default/kubelet\nExecStart=\nExecStart=/opt/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS --root-dir=${ROOT_DIR}\n";
}
