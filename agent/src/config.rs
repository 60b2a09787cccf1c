//! The agent's configuration: one module, one place where flags, environment and the TOML file
//! meet.
//!
//! Precedence, highest first: command-line flag, environment variable (`CKS_AGENT_…`, handled by
//! clap), the TOML file (`/etc/cks-agent/config.toml`, written by the node template's first-boot
//! configuration), then the `DEFAULT_…` constants below. Nothing else in the agent reads the
//! environment or the flags.
//!
//! # Paths and `--root`
//!
//! Paths in the configuration are *node paths* (`/opt/bin`, as the node sees them). Every path
//! the agent writes or keeps state in (data, install, CNI, systemd and containerd config, run
//! directory, and the default config file) is resolved under `--root` (default `/`), so tests and
//! template baking can run against a temporary tree. Files that *refer* to a node path (the kubelet
//! unit's `ExecStart`) keep the node path. Not prefixed: the bundle path given on the command line,
//! the containerd socket and `ctr` (ways to reach other programs), and `/dev` and `/sys` (the
//! kernel's; set them with `--dev-dir` / `--sys-dir`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Config file read when `--config` is not given (under `--root`); its absence is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cks-agent/config.toml";
/// The agent's state: journal, bundle manifests, lock.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cks-agent";
/// Where kubeadm, kubelet, kubectl and crictl go (CKS uses `/opt/bin`; Flatcar's `/usr` is read-only).
pub const DEFAULT_INSTALL_DIR: &str = "/opt/bin";
/// Where the CNI plugins go.
pub const DEFAULT_CNI_DIR: &str = "/opt/cni/bin";
/// Where `kubelet.service` and `kubelet.service.d/10-kubeadm.conf` go.
pub const DEFAULT_SYSTEMD_DIR: &str = "/etc/systemd/system";
/// containerd's configuration, patched for the sandbox (pause) image.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// containerd's gRPC socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The `ctr` client (looked up in `PATH` when not absolute).
pub const DEFAULT_CTR: &str = "ctr";
/// Runtime directory (bundle mount points).
pub const DEFAULT_RUN_DIR: &str = "/run/cks-agent";
/// Device nodes.
pub const DEFAULT_DEV_DIR: &str = "/dev";
/// sysfs.
pub const DEFAULT_SYS_DIR: &str = "/sys";
/// Volume label of the bundle ISO (contract 1).
pub const DEFAULT_BUNDLE_LABEL: &str = "CDROM";
/// How long to look for the bundle device before giving up (CKS waits 15 s × 100 on control
/// nodes).
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// Env var for `--config`.
pub const ENV_CONFIG: &str = "CKS_AGENT_CONFIG";
/// Env var for `--root`.
pub const ENV_ROOT: &str = "CKS_AGENT_ROOT";
/// Env var for `--data-dir`.
pub const ENV_DATA_DIR: &str = "CKS_AGENT_DATA_DIR";
/// Env var for `--install-dir`.
pub const ENV_INSTALL_DIR: &str = "CKS_AGENT_INSTALL_DIR";
/// Env var for `--cni-dir`.
pub const ENV_CNI_DIR: &str = "CKS_AGENT_CNI_DIR";
/// Env var for `--containerd-socket`.
pub const ENV_CONTAINERD_SOCKET: &str = "CKS_AGENT_CONTAINERD_SOCKET";
/// Env var for `--ctr`.
pub const ENV_CTR: &str = "CKS_AGENT_CTR";
/// Env var for `--bundle`.
pub const ENV_BUNDLE: &str = "CKS_AGENT_BUNDLE";
/// Env var for `--mount`.
pub const ENV_MOUNT: &str = "CKS_AGENT_MOUNT";
/// Env var for `--dev-dir`.
pub const ENV_DEV_DIR: &str = "CKS_AGENT_DEV_DIR";
/// Env var for `--sys-dir`.
pub const ENV_SYS_DIR: &str = "CKS_AGENT_SYS_DIR";
/// Env var for `--discovery-timeout-seconds`.
pub const ENV_DISCOVERY_TIMEOUT: &str = "CKS_AGENT_DISCOVERY_TIMEOUT_SECONDS";
/// Env var for `--kubeadm`.
pub const ENV_KUBEADM: &str = "CKS_AGENT_KUBEADM";
/// Env var for `--kubectl`.
pub const ENV_KUBECTL: &str = "CKS_AGENT_KUBECTL";
/// Env var for `--systemctl`.
pub const ENV_SYSTEMCTL: &str = "CKS_AGENT_SYSTEMCTL";
/// The service manager's client (looked up in `PATH` when not absolute).
pub const DEFAULT_SYSTEMCTL: &str = "systemctl";
/// Where the CKS-compatible success marker goes (CKS's node scripts check it).
pub const CKS_SUCCESS_MARKER: &str = "/home/cloud/success";

/// How the agent reads a bundle ISO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountMode {
    /// Kernel mount (loop + mount(2)); user-space reading when the kernel cannot (no iso9660
    /// driver, no privilege).
    #[default]
    Auto,
    /// Kernel mount only; fail otherwise.
    Kernel,
    /// Always read the ISO in user space.
    UserSpace,
}

/// The flags (and their environment variables) shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file [default: /etc/cks-agent/config.toml under --root]
    #[arg(long, global = true, env = ENV_CONFIG, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Prefix for every path the agent writes (install, CNI, systemd, containerd config, data,
    /// run dirs); for tests and template baking [default: /]
    #[arg(long, global = true, env = ENV_ROOT, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Journal and state directory [default: /var/lib/cks-agent]
    #[arg(long, global = true, env = ENV_DATA_DIR, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where kubeadm, kubelet, kubectl and crictl are installed [default: /opt/bin]
    #[arg(long, global = true, env = ENV_INSTALL_DIR, value_name = "DIR")]
    pub install_dir: Option<PathBuf>,
    /// Where the CNI plugins are installed [default: /opt/cni/bin]
    #[arg(long, global = true, env = ENV_CNI_DIR, value_name = "DIR")]
    pub cni_dir: Option<PathBuf>,
    /// containerd's socket, used by `ctr -a` [default: /run/containerd/containerd.sock]
    #[arg(long, global = true, env = ENV_CONTAINERD_SOCKET, value_name = "SOCK")]
    pub containerd_socket: Option<PathBuf>,
    /// The `ctr` program [default: ctr]
    #[arg(long, global = true, env = ENV_CTR, value_name = "PROGRAM")]
    pub ctr: Option<PathBuf>,
    /// The bundle: an ISO file, a block device or a directory. Without it the agent looks for
    /// the block device labelled CDROM, waiting for it
    #[arg(long, global = true, env = ENV_BUNDLE, value_name = "PATH")]
    pub bundle: Option<PathBuf>,
    /// How to read an ISO: kernel mount, user-space reader, or kernel with user-space fallback
    /// [default: auto]
    #[arg(long, global = true, env = ENV_MOUNT, value_enum)]
    pub mount: Option<MountMode>,
    /// Device directory searched for the bundle device and loop devices [default: /dev]
    #[arg(long, global = true, env = ENV_DEV_DIR, value_name = "DIR")]
    pub dev_dir: Option<PathBuf>,
    /// sysfs, scanned for block devices [default: /sys]
    #[arg(long, global = true, env = ENV_SYS_DIR, value_name = "DIR")]
    pub sys_dir: Option<PathBuf>,
    /// How long to wait for the bundle device [default: 1500]
    #[arg(long, global = true, env = ENV_DISCOVERY_TIMEOUT, value_name = "SECONDS")]
    pub discovery_timeout_seconds: Option<u64>,
    /// The kubeadm to run [default: kubeadm in the install dir]
    #[arg(long, global = true, env = ENV_KUBEADM, value_name = "PROGRAM")]
    pub kubeadm: Option<PathBuf>,
    /// The kubectl to run [default: kubectl in the install dir]
    #[arg(long, global = true, env = ENV_KUBECTL, value_name = "PROGRAM")]
    pub kubectl: Option<PathBuf>,
    /// The service manager client that starts kubelet and restarts containerd [default: systemctl]
    #[arg(long, global = true, env = ENV_SYSTEMCTL, value_name = "PROGRAM")]
    pub systemctl: Option<PathBuf>,
}

/// The TOML file. Every key is optional; unknown keys are an error (a typo must not be ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`Config::install_dir`].
    pub install_dir: Option<PathBuf>,
    /// See [`Config::cni_dir`].
    pub cni_dir: Option<PathBuf>,
    /// See [`Config::systemd_dir`].
    pub systemd_dir: Option<PathBuf>,
    /// See [`Config::containerd_config`].
    pub containerd_config: Option<PathBuf>,
    /// See [`Config::containerd_socket`].
    pub containerd_socket: Option<PathBuf>,
    /// See [`Config::ctr`].
    pub ctr: Option<PathBuf>,
    /// See [`Config::run_dir`].
    pub run_dir: Option<PathBuf>,
    /// See [`Config::dev_dir`].
    pub dev_dir: Option<PathBuf>,
    /// See [`Config::sys_dir`].
    pub sys_dir: Option<PathBuf>,
    /// See [`Config::bundle`].
    pub bundle: Option<PathBuf>,
    /// See [`Config::bundle_label`].
    pub bundle_label: Option<String>,
    /// See [`Config::mount`].
    pub mount: Option<MountMode>,
    /// See [`Config::discovery_timeout`], in seconds.
    pub discovery_timeout_seconds: Option<u64>,
    /// See [`Config::kubeadm`].
    pub kubeadm: Option<PathBuf>,
    /// See [`Config::kubectl`].
    pub kubectl: Option<PathBuf>,
    /// See [`Config::systemctl`].
    pub systemctl: Option<PathBuf>,
    /// The controller connection (the `run` command needs it).
    pub controller: Option<ControllerConfig>,
}

/// How to reach the controller (the `[controller]` table).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// `host:port` addresses, tried in order.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// SHA-256 fingerprint of the controller CA (`sha256:<hex>` or hex).
    pub ca_fingerprint: Option<String>,
    /// One-time enrollment token. Secret: never printed (see the `Debug` impl).
    pub enrollment_token: Option<String>,
    /// The VM name.
    pub node_name: Option<String>,
    /// `control-plane` or `worker`, a hint.
    pub role: Option<String>,
}

impl fmt::Debug for ControllerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControllerConfig")
            .field("addresses", &self.addresses)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field(
                "enrollment_token",
                &self.enrollment_token.as_ref().map(|_| "<redacted>"),
            )
            .field("node_name", &self.node_name)
            .field("role", &self.role)
            .finish()
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Prefix of every written path (`/` on a real node).
    pub root: PathBuf,
    /// State directory (node path).
    pub data_dir: PathBuf,
    /// Binaries directory (node path).
    pub install_dir: PathBuf,
    /// CNI plugins directory (node path).
    pub cni_dir: PathBuf,
    /// systemd unit directory (node path).
    pub systemd_dir: PathBuf,
    /// containerd's config file (node path).
    pub containerd_config: PathBuf,
    /// containerd's socket (not prefixed).
    pub containerd_socket: PathBuf,
    /// The `ctr` program (not prefixed).
    pub ctr: PathBuf,
    /// Runtime directory (node path).
    pub run_dir: PathBuf,
    /// Device directory (not prefixed).
    pub dev_dir: PathBuf,
    /// sysfs (not prefixed).
    pub sys_dir: PathBuf,
    /// The bundle given explicitly, if any (not prefixed).
    pub bundle: Option<PathBuf>,
    /// Volume label of the bundle device.
    pub bundle_label: String,
    /// How ISOs are read.
    pub mount: MountMode,
    /// How long to wait for the bundle device.
    pub discovery_timeout: Duration,
    /// The controller connection, when configured.
    pub controller: Option<ControllerConfig>,
    /// kubeadm (not prefixed); `None` = the installed one.
    pub kubeadm: Option<PathBuf>,
    /// kubectl (not prefixed); `None` = the installed one.
    pub kubectl: Option<PathBuf>,
    /// The service manager client (not prefixed).
    pub systemctl: PathBuf,
}

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read config file {path:?}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("config file {path:?} is invalid")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// One or more settings are invalid; all of them are listed.
    #[error("invalid configuration: {}", .problems.join("; "))]
    Invalid {
        /// One line per invalid setting.
        problems: Vec<String>,
    },
}

// === impl Config ===

impl Config {
    /// Reads the config file (the `--config` one, or the default one under `--root` if it
    /// exists) and resolves it with the flags.
    ///
    /// # Errors
    /// [`ConfigError`]: the named file is missing or unreadable, the TOML is invalid, or any
    /// setting is (all invalid settings are reported together).
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let (path, required) = match &args.config {
            Some(path) => (path.clone(), true),
            None => (under_root(&root, Path::new(DEFAULT_CONFIG_PATH)), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => parse_file(&text).map_err(|source| ConfigError::ParseFile {
                path: path.clone(),
                source: Box::new(source),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                FileConfig::default()
            }
            Err(source) => return Err(ConfigError::ReadFile { path, source }),
        };
        Config::resolve(args, file)
    }

    /// Merges flags over the file over the defaults, then validates everything at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every invalid setting.
    pub fn resolve(args: &ConfigArgs, file: FileConfig) -> Result<Config, ConfigError> {
        fn pick(flag: &Option<PathBuf>, file: Option<PathBuf>, default: &str) -> PathBuf {
            flag.clone()
                .or(file)
                .unwrap_or_else(|| PathBuf::from(default))
        }
        let config = Config {
            root: args.root.clone().unwrap_or_else(|| PathBuf::from("/")),
            data_dir: pick(&args.data_dir, file.data_dir, DEFAULT_DATA_DIR),
            install_dir: pick(&args.install_dir, file.install_dir, DEFAULT_INSTALL_DIR),
            cni_dir: pick(&args.cni_dir, file.cni_dir, DEFAULT_CNI_DIR),
            systemd_dir: file
                .systemd_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SYSTEMD_DIR)),
            containerd_config: file
                .containerd_config
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTAINERD_CONFIG)),
            containerd_socket: pick(
                &args.containerd_socket,
                file.containerd_socket,
                DEFAULT_CONTAINERD_SOCKET,
            ),
            ctr: pick(&args.ctr, file.ctr, DEFAULT_CTR),
            run_dir: file
                .run_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            dev_dir: pick(&args.dev_dir, file.dev_dir, DEFAULT_DEV_DIR),
            sys_dir: pick(&args.sys_dir, file.sys_dir, DEFAULT_SYS_DIR),
            bundle: args.bundle.clone().or(file.bundle),
            bundle_label: file
                .bundle_label
                .unwrap_or_else(|| DEFAULT_BUNDLE_LABEL.to_string()),
            mount: args.mount.or(file.mount).unwrap_or_default(),
            discovery_timeout: args
                .discovery_timeout_seconds
                .or(file.discovery_timeout_seconds)
                .map_or(DEFAULT_DISCOVERY_TIMEOUT, Duration::from_secs),
            controller: file.controller,
            kubeadm: args.kubeadm.clone().or(file.kubeadm),
            kubectl: args.kubectl.clone().or(file.kubectl),
            systemctl: pick(&args.systemctl, file.systemctl, DEFAULT_SYSTEMCTL),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let absolute = [
            ("root", &self.root),
            ("data_dir", &self.data_dir),
            ("install_dir", &self.install_dir),
            ("cni_dir", &self.cni_dir),
            ("systemd_dir", &self.systemd_dir),
            ("containerd_config", &self.containerd_config),
            ("containerd_socket", &self.containerd_socket),
            ("run_dir", &self.run_dir),
            ("dev_dir", &self.dev_dir),
            ("sys_dir", &self.sys_dir),
        ];
        for (key, path) in absolute {
            if !path.is_absolute() {
                problems.push(format!("{key} must be an absolute path, got {path:?}"));
            }
        }
        if self.bundle_label.is_empty() || self.bundle_label.len() > 32 {
            problems.push(format!(
                "bundle_label must be 1 to 32 characters (an ISO volume id), got {:?}",
                self.bundle_label
            ));
        }
        if self.discovery_timeout.is_zero() {
            problems.push("discovery_timeout_seconds must be at least 1".to_string());
        }
        if let Some(controller) = &self.controller {
            for address in &controller.addresses {
                if !address.contains(':') {
                    problems.push(format!(
                        "controller.addresses: {address:?} is not host:port"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Where a node path lives on this machine: `node_path` under [`Config::root`].
    pub fn host_path(&self, node_path: &Path) -> PathBuf {
        under_root(&self.root, node_path)
    }

    /// The kubeadm to run: the configured one, else the installed one.
    pub fn kubeadm_program(&self) -> PathBuf {
        self.kubeadm
            .clone()
            .unwrap_or_else(|| self.host_path(&self.install_dir).join("kubeadm"))
    }

    /// The kubectl to run: the configured one, else the installed one.
    pub fn kubectl_program(&self) -> PathBuf {
        self.kubectl
            .clone()
            .unwrap_or_else(|| self.host_path(&self.install_dir).join("kubectl"))
    }

    /// The host paths of everything the bundle installation writes.
    pub fn node_paths(&self) -> NodePaths {
        NodePaths {
            install_dir: self.host_path(&self.install_dir),
            install_dir_on_node: self.install_dir.clone(),
            cni_dir: self.host_path(&self.cni_dir),
            systemd_dir: self.host_path(&self.systemd_dir),
            data_dir: self.host_path(&self.data_dir),
            containerd_config: self.host_path(&self.containerd_config),
            run_dir: self.host_path(&self.run_dir),
        }
    }
}

/// Host paths (already under `--root`) of what installation writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// kubeadm, kubelet, kubectl, crictl.
    pub install_dir: PathBuf,
    /// The same directory as the node sees it (written into the kubelet unit).
    pub install_dir_on_node: PathBuf,
    /// CNI plugins.
    pub cni_dir: PathBuf,
    /// systemd units.
    pub systemd_dir: PathBuf,
    /// The agent's state.
    pub data_dir: PathBuf,
    /// containerd's config file.
    pub containerd_config: PathBuf,
    /// Runtime directory.
    pub run_dir: PathBuf,
}

/// Parses the TOML file.
///
/// # Errors
/// The TOML error, with line and column.
pub fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

/// `path` (absolute or not) under `root`.
fn under_root(root: &Path, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    root.join(relative)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        args: ConfigArgs,
    }

    fn args(flags: &[&str]) -> ConfigArgs {
        let mut argv = vec!["cks-agent"];
        argv.extend_from_slice(flags);
        TestCli::try_parse_from(argv).expect("flags parse").args
    }

    #[test]
    fn invalid_settings_are_all_reported_at_once() {
        let file = parse_file(
            "install_dir = \"opt/bin\"\nbundle_label = \"\"\n[controller]\naddresses = [\"nohost\"]\n",
        )
        .expect("parses");
        let err = Config::resolve(&args(&["--data-dir", "var/lib"]), file).expect_err("invalid");
        let ConfigError::Invalid { problems } = err else {
            panic!("expected Invalid, got {err:?}")
        };
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("install_dir")));
        assert!(problems.iter().any(|p| p.starts_with("data_dir")));
        assert!(problems.iter().any(|p| p.starts_with("bundle_label")));
        assert!(problems.iter().any(|p| p.contains("nohost")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse_file("instal_dir = \"/x\"\n").expect_err("typo");
        assert!(err.to_string().contains("instal_dir"), "{err}");
    }

    #[test]
    fn defaults_apply_without_file_or_flags() {
        let config = Config::resolve(&args(&[]), FileConfig::default()).expect("valid");
        assert_eq!(config.root, Path::new("/"));
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(config.install_dir, Path::new(DEFAULT_INSTALL_DIR));
        assert_eq!(config.cni_dir, Path::new(DEFAULT_CNI_DIR));
        assert_eq!(
            config.containerd_socket,
            Path::new(DEFAULT_CONTAINERD_SOCKET)
        );
        assert_eq!(config.mount, MountMode::Auto);
        assert_eq!(config.discovery_timeout, DEFAULT_DISCOVERY_TIMEOUT);
        assert_eq!(config.node_paths().install_dir, Path::new("/opt/bin"));
    }

    #[test]
    fn flags_override_file_and_root_prefixes_written_paths() {
        let file = parse_file(
            "install_dir = \"/usr/local/bin\"\ncni_dir = \"/x/cni\"\nmount = \"user-space\"\n\
             containerd_socket = \"/file.sock\"\n",
        )
        .expect("parses");
        let config = Config::resolve(
            &args(&[
                "--root",
                "/tmp/r",
                "--install-dir",
                "/opt/bin",
                "--containerd-socket",
                "/s/c.sock",
            ]),
            file,
        )
        .expect("valid");
        assert_eq!(config.mount, MountMode::UserSpace);
        let paths = config.node_paths();
        assert_eq!(paths.install_dir, Path::new("/tmp/r/opt/bin"));
        assert_eq!(paths.install_dir_on_node, Path::new("/opt/bin"));
        assert_eq!(paths.cni_dir, Path::new("/tmp/r/x/cni"));
        assert_eq!(paths.data_dir, Path::new("/tmp/r/var/lib/cks-agent"));
        assert_eq!(
            paths.containerd_config,
            Path::new("/tmp/r/etc/containerd/config.toml")
        );
        // Sockets are how to reach another program: never prefixed.
        assert_eq!(config.containerd_socket, Path::new("/s/c.sock"));
    }

    #[test]
    fn default_config_file_is_read_under_root_and_may_be_absent() {
        let root = tempfile::tempdir().expect("tempdir");
        let root_arg = root.path().to_str().expect("utf-8");
        let config = Config::load(&args(&["--root", root_arg])).expect("absent file is fine");
        assert_eq!(config.install_dir, Path::new(DEFAULT_INSTALL_DIR));

        std::fs::create_dir_all(root.path().join("etc/cks-agent")).expect("mkdir");
        std::fs::write(
            root.path().join("etc/cks-agent/config.toml"),
            "install_dir = \"/usr/local/bin\"\n",
        )
        .expect("write");
        let config = Config::load(&args(&["--root", root_arg])).expect("loads");
        assert_eq!(config.install_dir, Path::new("/usr/local/bin"));

        let err = Config::load(&args(&["--config", "/nonexistent/cks.toml"]))
            .expect_err("explicit file must exist");
        assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");
    }

    #[test]
    fn enrollment_token_is_never_printed() {
        let file = parse_file(
            "[controller]\naddresses = [\"10.0.0.1:8443\"]\nenrollment_token = \"s3cr3t-token\"\n",
        )
        .expect("parses");
        let config = Config::resolve(&args(&[]), file).expect("valid");
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cr3t-token"), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
