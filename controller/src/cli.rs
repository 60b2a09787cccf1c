//! The people's CLI: `cks-controller version|cluster …` over the same signed API any CloudStack
//! client uses (the controller's endpoint, keys from the `cs` client's environment variables),
//! with progress while a cluster is created, stopped, started or deleted.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::time::Instant;

use crate::cloudstack::{ClientConfig, CloudStackClient, CloudStackError};

/// Where the API is and who calls it (the `cs` client's variables).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The controller's API URL
    #[arg(
        long,
        env = "CLOUDSTACK_ENDPOINT",
        default_value = "http://127.0.0.1:8090/client/api"
    )]
    pub endpoint: String,
    /// API key
    #[arg(long, env = "CLOUDSTACK_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The secret key comes from the environment only (`CLOUDSTACK_SECRET`, as for `cs`): process
/// arguments are visible to every user of the machine.
pub const ENV_SECRET: &str = "CLOUDSTACK_SECRET";

/// Supported versions.
#[derive(Debug, Subcommand)]
pub enum VersionCommand {
    /// Register a binaries ISO as a Kubernetes version (admin)
    Add {
        /// MAJOR.MINOR.PATCH
        #[arg(long)]
        semver: String,
        /// Where CloudStack downloads the ISO from
        #[arg(long)]
        url: String,
        /// {SHA-256}<hex> as printed by cks-isobuilder
        #[arg(long)]
        checksum: Option<String>,
        /// Zone id (default: all zones)
        #[arg(long)]
        zone: Option<String>,
        /// Name (default v<semver>)
        #[arg(long)]
        name: Option<String>,
        /// Minimum vCPUs of node offerings
        #[arg(long, default_value_t = 2)]
        min_cpu: u32,
        /// Minimum RAM of node offerings, MB
        #[arg(long, default_value_t = 2048)]
        min_memory: u32,
    },
    /// List versions
    List,
    /// Delete a version (refused while a cluster uses it)
    Delete {
        /// Version id
        id: String,
    },
}

/// Clusters.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster and follow it to Running (or Error)
    Create {
        /// Cluster name
        #[arg(long)]
        name: String,
        /// Zone id
        #[arg(long)]
        zone: String,
        /// Kubernetes version id
        #[arg(long)]
        version: String,
        /// Node service offering id
        #[arg(long)]
        offering: String,
        /// Workers
        #[arg(long, default_value_t = 1)]
        size: u32,
        /// Control nodes (3 for HA)
        #[arg(long, default_value_t = 1)]
        control_nodes: u32,
        /// Existing network id (default: a new isolated network)
        #[arg(long)]
        network: Option<String>,
        /// SSH key pair name for your own access to the nodes
        #[arg(long)]
        keypair: Option<String>,
        /// Return at once instead of following the creation
        #[arg(long)]
        no_wait: bool,
    },
    /// List clusters
    List,
    /// Print a cluster's kubeconfig
    Kubeconfig {
        /// Cluster id
        id: String,
    },
    /// Show a cluster's history, newest first: each operation, its steps and their outcome
    /// (why a cluster is in Alert or Error, without reading logs)
    Events {
        /// Cluster id
        id: String,
        /// How many events to show
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Stop a cluster's node VMs (their disks are kept)
    Stop {
        /// Cluster id
        id: String,
        /// Return at once
        #[arg(long)]
        no_wait: bool,
    },
    /// Start a stopped cluster and wait until every node is Ready
    Start {
        /// Cluster id
        id: String,
        /// Return at once
        #[arg(long)]
        no_wait: bool,
    },
    /// Scale a cluster: change its worker count, its node offering, or remove given nodes;
    /// follows the scale node by node
    Scale {
        /// Cluster id
        id: String,
        /// New worker count (new workers join; the newest ones leave first)
        #[arg(long)]
        size: Option<u32>,
        /// New node service offering id (running VMs need CloudStack's dynamic scaling)
        #[arg(long)]
        offering: Option<String>,
        /// VM ids of nodes to remove, comma-separated (CloudStack's `nodeids`)
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
        /// Return at once
        #[arg(long)]
        no_wait: bool,
    },
    /// Upgrade a cluster to the next Kubernetes version, one node at a time (control nodes
    /// first: drain, upgrade, uncordon, health check); upgrading again after a failure continues
    /// from the node that failed
    Upgrade {
        /// Cluster id
        id: String,
        /// The Kubernetes version id to upgrade to
        #[arg(long)]
        version: String,
        /// Return at once
        #[arg(long)]
        no_wait: bool,
    },
    /// Delete a cluster and everything it made
    Delete {
        /// Cluster id
        id: String,
        /// Return at once
        #[arg(long)]
        no_wait: bool,
    },
}

fn client(args: &ClientArgs) -> Result<CloudStackClient> {
    let secret = std::env::var(ENV_SECRET).ok().filter(|s| !s.is_empty());
    let (Some(key), Some(secret)) = (&args.api_key, secret) else {
        bail!("set CLOUDSTACK_KEY (or --api-key) and {ENV_SECRET} in the environment");
    };
    let mut config = ClientConfig::new(args.endpoint.clone(), key.clone(), secret);
    config.rate_limit = None;
    Ok(CloudStackClient::new(config)?)
}

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs a `version` subcommand.
///
/// # Errors
/// The API refused it or is unreachable.
pub async fn version(args: &ClientArgs, command: VersionCommand) -> Result<()> {
    let api = client(args)?;
    match command {
        VersionCommand::Add {
            semver,
            url,
            checksum,
            zone,
            name,
            min_cpu,
            min_memory,
        } => {
            let (cpu, memory) = (min_cpu.to_string(), min_memory.to_string());
            let mut params = vec![
                ("semanticversion", semver.as_str()),
                ("url", url.as_str()),
                ("mincpunumber", cpu.as_str()),
                ("minmemory", memory.as_str()),
            ];
            for (key, value) in [("checksum", &checksum), ("zoneid", &zone), ("name", &name)] {
                if let Some(value) = value {
                    params.push((key, value.as_str()));
                }
            }
            let out = api.call("addKubernetesSupportedVersion", &params).await?;
            print_json(&out)
        }
        VersionCommand::List => {
            let out = api.call("listKubernetesSupportedVersions", &[]).await?;
            let versions = out
                .get("kubernetessupportedversion")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<38} {:<16} {:<10} {:<9} ISO",
                "ID", "NAME", "VERSION", "STATE"
            );
            for v in versions {
                println!(
                    "{:<38} {:<16} {:<10} {:<9} {}",
                    text(&v, "id"),
                    text(&v, "name"),
                    text(&v, "semanticversion"),
                    text(&v, "state"),
                    text(&v, "isostate")
                );
            }
            Ok(())
        }
        VersionCommand::Delete { id } => {
            let job = api
                .submit("deleteKubernetesSupportedVersion", &[("id", &id)])
                .await?;
            api.wait_job(&job.job_id, Instant::now() + Duration::from_secs(600))
                .await?;
            println!("version {id} deleted");
            Ok(())
        }
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("-")
}

/// Runs a `cluster` subcommand.
///
/// # Errors
/// The API refused it, is unreachable, or the operation failed.
pub async fn cluster(args: &ClientArgs, command: ClusterCommand) -> Result<()> {
    let api = client(args)?;
    match command {
        ClusterCommand::Create {
            name,
            zone,
            version,
            offering,
            size,
            control_nodes,
            network,
            keypair,
            no_wait,
        } => {
            let (size, control) = (size.to_string(), control_nodes.to_string());
            let mut params = vec![
                ("name", name.as_str()),
                ("zoneid", zone.as_str()),
                ("kubernetesversionid", version.as_str()),
                ("serviceofferingid", offering.as_str()),
                ("size", size.as_str()),
                ("controlnodes", control.as_str()),
            ];
            if let Some(network) = &network {
                params.push(("networkid", network));
            }
            if let Some(keypair) = &keypair {
                params.push(("keypair", keypair));
            }
            let job = api.submit("createKubernetesCluster", &params).await?;
            let id = job.id.clone().context("the API returned no cluster id")?;
            eprintln!("cluster {id} created, job {}", job.job_id);
            if no_wait {
                println!("{id}");
                return Ok(());
            }
            follow(&api, &id, &job.job_id).await?;
            println!("{id}");
            Ok(())
        }
        ClusterCommand::List => {
            let out = api.call("listKubernetesClusters", &[]).await?;
            let clusters = out
                .get("kubernetescluster")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<38} {:<16} {:<10} {:>7} {:>5} {:<24} STEP",
                "ID", "NAME", "STATE", "CONTROL", "SIZE", "ENDPOINT"
            );
            for c in clusters {
                println!(
                    "{:<38} {:<16} {:<10} {:>7} {:>5} {:<24} {}",
                    text(&c, "id"),
                    text(&c, "name"),
                    text(&c, "state"),
                    c.get("controlnodes").and_then(Value::as_u64).unwrap_or(0),
                    c.get("size").and_then(Value::as_u64).unwrap_or(0),
                    text(&c, "endpoint"),
                    c.pointer("/progress/step")
                        .and_then(Value::as_str)
                        .unwrap_or("-")
                );
            }
            Ok(())
        }
        ClusterCommand::Kubeconfig { id } => {
            let out = api
                .call("getKubernetesClusterConfig", &[("id", &id)])
                .await?;
            let config = out
                .pointer("/clusterconfig/configdata")
                .and_then(Value::as_str)
                .context("the API returned no kubeconfig")?;
            print!("{config}");
            std::io::stdout().flush()?;
            Ok(())
        }
        ClusterCommand::Events { id, limit } => {
            let limit = limit.clamp(1, 500).to_string();
            let out = api
                .call(
                    "listKubernetesClusterEvents",
                    &[("id", &id), ("page", "1"), ("pagesize", &limit)],
                )
                .await?;
            let events = out
                .get("kubernetesclusterevent")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!(
                "{:<24} {:<8} {:<22} {:<10} DESCRIPTION",
                "TIME", "OPERATION", "STEP", "STATE"
            );
            for e in events {
                println!(
                    "{:<24} {:<8} {:<22} {:<10} {}",
                    text(&e, "created"),
                    text(&e, "operation"),
                    text(&e, "step"),
                    text(&e, "state"),
                    text(&e, "description"),
                );
            }
            Ok(())
        }
        ClusterCommand::Stop { id, no_wait } => {
            operate(
                &api,
                "stopKubernetesCluster",
                &id,
                no_wait,
                "stopping",
                "stopped",
            )
            .await
        }
        ClusterCommand::Start { id, no_wait } => {
            operate(
                &api,
                "startKubernetesCluster",
                &id,
                no_wait,
                "starting",
                "running",
            )
            .await
        }
        ClusterCommand::Scale {
            id,
            size,
            offering,
            remove,
            no_wait,
        } => {
            let size = size.map(|s| s.to_string());
            let remove = remove.join(",");
            let mut params = vec![("id", id.as_str())];
            if let Some(size) = &size {
                params.push(("size", size));
            }
            if let Some(offering) = &offering {
                params.push(("serviceofferingid", offering));
            }
            if !remove.is_empty() {
                params.push(("nodeids", &remove));
            }
            if params.len() == 1 {
                bail!("nothing to scale: give --size, --offering or --remove");
            }
            run(&api, "scaleKubernetesCluster", &params, no_wait, "scaled").await
        }
        ClusterCommand::Upgrade {
            id,
            version,
            no_wait,
        } => {
            let params = [
                ("id", id.as_str()),
                ("kubernetesversionid", version.as_str()),
            ];
            run(
                &api,
                "upgradeKubernetesCluster",
                &params,
                no_wait,
                "upgraded",
            )
            .await
        }
        ClusterCommand::Delete { id, no_wait } => {
            operate(
                &api,
                "deleteKubernetesCluster",
                &id,
                no_wait,
                "deleting",
                "deleted",
            )
            .await
        }
    }
}

/// Runs an async cluster command and, unless `no_wait`, follows it to its end.
async fn operate(
    api: &CloudStackClient,
    command: &str,
    id: &str,
    no_wait: bool,
    doing: &str,
    done: &str,
) -> Result<()> {
    let job = api.submit(command, &[("id", id)]).await?;
    if no_wait {
        eprintln!("{doing} cluster {id}, job {}", job.job_id);
        return Ok(());
    }
    follow(api, id, &job.job_id).await?;
    println!("cluster {id} {done}");
    Ok(())
}

/// Runs an async cluster command with `params` and, unless `no_wait`, follows it to its end
/// and prints the cluster's nodes.
async fn run(
    api: &CloudStackClient,
    command: &str,
    params: &[(&str, &str)],
    no_wait: bool,
    done: &str,
) -> Result<()> {
    let id = params
        .iter()
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| *v)
        .unwrap_or_default();
    let job = api.submit(command, params).await?;
    if no_wait {
        eprintln!("{command} of cluster {id}: job {}", job.job_id);
        return Ok(());
    }
    follow(api, id, &job.job_id).await?;
    let listed = api.call("listKubernetesClusters", &[("id", id)]).await?;
    if let Some(cluster) = listed.pointer("/kubernetescluster/0") {
        println!(
            "cluster {id} {done}: {} control + {} workers, version {}",
            cluster
                .get("controlnodes")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            cluster.get("size").and_then(Value::as_u64).unwrap_or(0),
            text(cluster, "kubernetesversionname"),
        );
        for vm in cluster
            .get("virtualmachines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            println!(
                "  {:<40} {:<8} {:<8} {}",
                text(vm, "name"),
                if vm.get("iscontrolnode") == Some(&Value::Bool(true)) {
                    "control"
                } else {
                    "worker"
                },
                text(vm, "state"),
                text(vm, "kubernetesnodeversion"),
            );
        }
    }
    Ok(())
}

/// Polls the job and shows the cluster's current step until the job ends.
async fn follow(api: &CloudStackClient, cluster_id: &str, job_id: &str) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(4 * 3600);
    loop {
        let job = api.query_job(job_id).await?;
        let status = job.status();
        let cluster = api
            .call("listKubernetesClusters", &[("id", cluster_id)])
            .await
            .ok()
            .and_then(|v| v.pointer("/kubernetescluster/0").cloned());
        let line = cluster
            .as_ref()
            .map(|c| {
                let step = c
                    .pointer("/progress/step")
                    .and_then(Value::as_str)
                    .unwrap_or("-");
                let detail = c
                    .pointer("/progress/steps")
                    .and_then(Value::as_array)
                    .and_then(|s| s.last())
                    .and_then(|s| s.get("detail"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!("{} · {step} · {detail}", text(c, "state"))
            })
            .unwrap_or_default();
        if !line.is_empty() && line != last {
            match &bar {
                Some(bar) => bar.set_message(line.clone()),
                None => eprintln!("{line}"),
            }
            last = line;
        }
        match status {
            crate::cloudstack::types::JobStatus::Pending => {}
            crate::cloudstack::types::JobStatus::Succeeded => {
                if let Some(bar) = bar {
                    bar.finish_with_message(last);
                }
                return Ok(());
            }
            _ => {
                if let Some(bar) = bar {
                    bar.abandon();
                }
                let text = job
                    .jobresult
                    .as_ref()
                    .and_then(|r| r.get("errortext"))
                    .and_then(Value::as_str)
                    .unwrap_or("the job failed");
                bail!("{text}");
            }
        }
        if Instant::now() > deadline {
            bail!("gave up following job {job_id}; it may still finish");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Maps a CloudStack error to one line for people.
pub fn describe(err: &anyhow::Error) -> String {
    match err.downcast_ref::<CloudStackError>() {
        Some(CloudStackError::Api {
            errorcode,
            errortext,
            ..
        }) => format!("error {errorcode}: {errortext}"),
        _ => format!("{err:#}"),
    }
}
