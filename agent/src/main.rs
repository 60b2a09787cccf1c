//! `cks-agent` command line: parses flags, sets up logging, calls the library, maps the result
//! to an exit code.

use std::process::ExitCode;
use std::sync::Arc;

use cks_agent::config::{Config, ConfigArgs};
use cks_agent::images::CtrImageStore;
use cks_agent::{AgentError, EXIT_OK, EXIT_USAGE};
use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info};

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure, 2 invalid command line or configuration, 3 bundle refused \
(corrupt, truncated, wrong architecture; nothing was changed), 4 bundle not found, 5 another \
cks-agent is working on this node, 6 the controller refused this node's enrollment.

Logging: RUST_LOG sets the level (default info); logs go to stderr.";

/// The CKS node agent: finds the Kubernetes bundle ISO, verifies it, installs it.
#[derive(Debug, Parser)]
#[command(name = "cks-agent", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Log line format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the bundle against its cks-manifest.json and this host's architecture; change
    /// nothing. Exit 0 only if every file, blob and image checks out.
    Verify,
    /// Find, verify and install the bundle: kubeadm, kubelet, kubectl and crictl into the
    /// install dir, CNI plugins, the kubelet unit and drop-in, the manifests; set containerd's
    /// sandbox image; import the images into containerd (namespace k8s.io). Each step is
    /// journaled in the data dir: a rerun skips what is done, a new bundle (upgrade) installs
    /// again. Exit 0 only when every step is done.
    Install,
    /// The node agent proper (what the systemd unit runs): enroll with the controller named in
    /// the [controller] table of the config file (one-time token, CA pinned by fingerprint),
    /// keep an mTLS stream to it, install the bundle in the background and execute the
    /// controller's commands (kubeadm init/join, manifests, drain, upgrade, reset…). Reconnects
    /// with backoff when the controller is away; never exits on its own except for a
    /// configuration error or a refused enrollment.
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            error!(error = %chain(&err), "invalid configuration");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    info!(
        command = ?cli.command,
        root = %config.root.display(),
        data_dir = %config.data_dir.display(),
        install_dir = %config.install_dir.display(),
        cni_dir = %config.cni_dir.display(),
        containerd_socket = %config.containerd_socket.display(),
        mount = ?config.mount,
        "cks-agent starting"
    );
    match run(&cli.command, &config) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(err) => {
            error!(error = %chain(&err), "cks-agent failed");
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(command: &Command, config: &Config) -> Result<(), AgentError> {
    if let Command::Run = command {
        return run_session(config);
    }
    let mut sleep = std::thread::sleep;
    let bundle = cks_agent::open_bundle(config, &mut sleep)?;
    match command {
        Command::Verify => {
            cks_agent::verify(&bundle)?;
        }
        Command::Run => unreachable!("handled above"),
        Command::Install => {
            let store = CtrImageStore::new(config.ctr.clone(), config.containerd_socket.clone());
            let outcome = cks_agent::install(&bundle, config, &store)?;
            info!(
                manifest_sha256 = %outcome.manifest_sha256,
                kubernetes_version = %outcome.kubernetes_version,
                steps_run = ?outcome.steps_run,
                "install finished"
            );
        }
    }
    Ok(())
}

fn run_session(config: &Config) -> Result<(), AgentError> {
    let store = CtrImageStore::new(config.ctr.clone(), config.containerd_socket.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| AgentError::Runtime { source })?;
    runtime
        .block_on(cks_agent::session::run(config.clone(), Arc::new(store)))
        .map_err(AgentError::from)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An error and its causes on one line: `a: b: c`.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
