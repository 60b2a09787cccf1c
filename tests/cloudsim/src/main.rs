//! `cloudsim --listen 127.0.0.1:8080 --state DIR [--api-key K --secret-key S]
//! [--agent PATH [--egress 127.0.0.1:9443]…]`: serves the simulated CloudStack API until
//! SIGINT/SIGTERM. Prints the admin and user keys at start. With `--agent`, every started VM
//! runs that `cks-agent` (see the `cloudsim::nodes` documentation); without it VMs are records.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cloudsim::faults::FaultConfig;
use cloudsim::nodes::{NetworkMode, NodesConfig};
use cloudsim::{SimConfig, Simulator};

/// A CloudStack API simulator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// State directory (state.json, downloaded ISOs); in memory when absent.
    #[arg(long)]
    state: Option<PathBuf>,
    /// The admin's API key (generated when absent).
    #[arg(long, requires = "secret_key")]
    api_key: Option<String>,
    /// The admin's secret key (generated when absent).
    #[arg(long, requires = "api_key")]
    secret_key: Option<String>,
    /// How long each async job takes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    job_millis: u64,
    /// A JSON fault configuration (see `POST /sim/faults`).
    #[arg(long)]
    faults: Option<PathBuf>,
    /// The zone's public IP range when the state is created [default: 127.64.0.0/16]; inside
    /// 127.0.0.0/8 when nodes run
    #[arg(long, value_name = "CIDR")]
    public_cidr: Option<String>,
    /// Run every started VM as a node with this cks-agent binary (needs --state)
    #[arg(long, value_name = "PATH", requires = "state")]
    agent: Option<PathBuf>,
    /// Directory of the kubesim stand-ins (kubeadm, kubelet, systemctl) [default: the
    /// directory of this executable]
    #[arg(long, value_name = "DIR", requires = "agent")]
    kubesim_bin: Option<PathBuf>,
    /// A host endpoint nodes may reach, e.g. the controller's agent endpoint; inside every node
    /// the same address leads to it (repeatable)
    #[arg(long, value_name = "ADDR:PORT", requires = "agent")]
    egress: Vec<SocketAddrV4>,
    /// How nodes are networked
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto, requires = "agent")]
    node_network: NetworkMode,
    /// Seconds a node's processes get between SIGTERM and SIGKILL
    #[arg(long, default_value_t = 5, requires = "agent")]
    stop_grace_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let faults = match &args.faults {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read fault configuration {path:?}"))?;
            serde_json::from_str::<FaultConfig>(&text)
                .with_context(|| format!("failed to parse fault configuration {path:?}"))?
        }
        None => FaultConfig::default(),
    };
    let nodes = args.agent.map(|agent| {
        let mut nodes = NodesConfig::new(agent);
        if let Some(dir) = args.kubesim_bin {
            nodes.kubesim_bin = dir;
        }
        nodes.egress = args.egress;
        nodes.network = args.node_network;
        nodes.stop_grace = Duration::from_secs(args.stop_grace_seconds);
        nodes
    });
    let handle = Simulator::start(SimConfig {
        listen: args.listen,
        state_dir: args.state,
        api_key: args.api_key,
        secret_key: args.secret_key,
        job_duration: Duration::from_millis(args.job_millis),
        faults,
        public_cidr: args.public_cidr,
        nodes,
    })
    .await
    .context("failed to start cloudsim")?;
    let admin = handle.admin_keys();
    let user = handle.user_keys();
    println!("endpoint:         {}", handle.endpoint());
    println!("admin api key:    {}", admin.api_key);
    println!("admin secret key: {}", admin.secret_key);
    println!("user api key:     {}", user.api_key);
    println!("user secret key:  {}", user.secret_key);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to install SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}
