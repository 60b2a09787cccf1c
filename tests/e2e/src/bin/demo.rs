//! `make demo`: the main job end to end on local fixtures, as an operator and a tenant would
//! do it.
//!
//! 1. Two bundle ISOs (Kubernetes 1.33.1 and 1.34.0) built by the real `cks-isobuilder` from a
//!    local upstream (file server + docker-registry on 127.0.0.1), verified.
//! 2. `cloudsim` (the CloudStack simulator; its VMs run the real `cks-agent` with the
//!    Kubernetes stand-ins) and `cks-controller serve` started as background processes.
//! 3. With the controller's CLI, each operation followed step by step as an operator sees it:
//!    both versions registered; a cluster of 1 control node and 2 workers created at 1.33.1, its
//!    kubeconfig printed and used by the real `kubectl`; scaled to 3 workers; upgraded to
//!    1.34.0 one node at a time (`kubectl` then shows v1.34.0 on all 4 nodes); stopped;
//!    started; deleted, with no VM, network or public IP left.
//! 4. Without `--keep` both services are stopped; with it (`make demo KEEP=1`) the cluster is
//!    not deleted and the services stay up, and the `export CLOUDSTACK_…` lines for `cs` are
//!    printed; `make demo-stop` stops them (and the cluster's nodes with cloudsim).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cks_e2e::stack::{BuiltIso, build_isos, client, wait_version_ready};
use clap::Parser;
use serde_json::Value;

const CLOUDSIM_ADDR: &str = "127.0.0.1:8080";
const API_ADDR: &str = "127.0.0.1:8090";
const AGENTS_ADDR: &str = "127.0.0.1:8091";
const RELEASES: [&str; 2] = ["1.33.1", "1.34.0"];
/// The version the cluster is created at.
const CREATE_AT: &str = RELEASES[0];
/// The version it is upgraded to (the next minor).
const UPGRADE_TO: &str = RELEASES[1];
/// Workers at creation (beside one control node).
const WORKERS: u32 = 2;
/// Workers after the scale.
const SCALED_WORKERS: u32 = 3;

#[derive(Parser)]
#[command(about = "Run the Kubernetes service end to end on local fixtures (make demo)")]
struct Args {
    /// Directory of the workspace's binaries (cks-isobuilder, cks-agent, cloudsim,
    /// cks-controller, kubeadm, kubelet, systemctl).
    #[arg(long, default_value = "target/debug")]
    bin: PathBuf,
    /// Where the ISOs, state, logs and pid files go.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// Leave the cluster, cloudsim and the controller running and print the `export` lines for
    /// `cs`.
    #[arg(long)]
    keep: bool,
    /// Stop what a `--keep` run left running, and exit.
    #[arg(long)]
    stop: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    if args.stop {
        return stop_all(&out);
    }
    if out
        .join("pids")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
    {
        bail!(
            "a demo is still running (pid files in {}); run `make demo-stop` first",
            out.join("pids").display()
        );
    }
    let bin = args.bin.canonicalize().context("--bin")?;
    let program = |name: &str| -> Result<PathBuf> {
        let path = bin.join(name);
        ensure!(
            path.is_file(),
            "{} is missing: run `make build`",
            path.display()
        );
        Ok(path)
    };
    for name in ["kubeadm", "kubelet", "systemctl"] {
        program(name)?;
    }
    let isobuilder = program("cks-isobuilder")?;
    let agent = program("cks-agent")?;
    let cloudsim = program("cloudsim")?;
    let controller = program("cks-controller")?;
    // The simulator's VM dirs hold unix sockets (107-byte limit): keep its state path short.
    let sim_state = std::env::temp_dir().join("cks-demo-cloudsim");
    let _ = std::fs::remove_dir_all(&sim_state);
    for dir in ["controller", "logs"] {
        let _ = std::fs::remove_dir_all(out.join(dir));
    }
    std::fs::create_dir_all(out.join("logs"))?;
    std::fs::create_dir_all(out.join("pids"))?;

    step("building the bundle ISOs with cks-isobuilder from a local upstream");
    let isos = build_isos(&isobuilder, &RELEASES, &out.join("isos"))?;
    for iso in &isos {
        println!("    {}  sha256 {}", iso.path.display(), iso.sha256);
        run(&isobuilder, &["verify", path(&iso.path)])?;
    }

    let mut services = Services::default();
    step(&format!(
        "starting cloudsim on {CLOUDSIM_ADDR} (VMs run cks-agent in network namespaces)"
    ));
    services.start(
        &out,
        "cloudsim",
        Command::new(&cloudsim)
            .args(["--listen", CLOUDSIM_ADDR, "--job-millis", "200"])
            .arg("--state")
            .arg(&sim_state)
            .arg("--agent")
            .arg(&agent)
            .arg("--kubesim-bin")
            .arg(&bin)
            .args(["--egress", AGENTS_ADDR]),
    )?;
    wait_http(CLOUDSIM_ADDR)?;
    // cloudsim generates the admin's keys and prints them (never on a command line).
    let keys = read_keys(&out.join("logs/cloudsim.log"))?;
    step(&format!(
        "starting cks-controller on {API_ADDR} (agents on {AGENTS_ADDR})"
    ));
    services.start(
        &out,
        "controller",
        Command::new(&controller)
            .arg("serve")
            .env(
                "CKS_CLOUDSTACK_ENDPOINT",
                format!("http://{CLOUDSIM_ADDR}/client/api"),
            )
            .env("CKS_CLOUDSTACK_API_KEY", &keys.0)
            .env("CKS_CLOUDSTACK_SECRET_KEY", &keys.1)
            .env("CKS_API_LISTEN", API_ADDR)
            .env("CKS_AGENTS_LISTEN", AGENTS_ADDR)
            .env("CKS_DATA_DIR", out.join("controller")),
    )?;
    wait_http(API_ADDR)?;

    let endpoint = format!("http://{API_ADDR}/client/api");
    let cli = Cli {
        program: controller.clone(),
        endpoint: endpoint.clone(),
        key: keys.0.clone(),
        secret: keys.1.clone(),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let api = client(&endpoint, &keys.0, &keys.1)?;
    let result = runtime.block_on(tenant_flow(&cli, &api, &isos, &out, args.keep));
    if let Err(err) = &result {
        eprintln!(
            "\ndemo failed: {err:#}\nlogs: {}",
            out.join("logs").display()
        );
    }
    if args.keep && result.is_ok() {
        step("left running (make demo-stop stops them); for the cs client:");
        println!("export CLOUDSTACK_ENDPOINT={endpoint}");
        println!("export CLOUDSTACK_KEY={}", keys.0);
        println!("export CLOUDSTACK_SECRET={}", keys.1);
        services.forget();
    } else {
        step("stopping cks-controller and cloudsim");
        services.stop_all(&out);
    }
    result
}

/// The controller's CLI, as a person would run it.
struct Cli {
    program: PathBuf,
    endpoint: String,
    key: String,
    secret: String,
}

impl Cli {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(args)
            .env("CLOUDSTACK_ENDPOINT", &self.endpoint)
            .env("CLOUDSTACK_KEY", &self.key)
            .env("CLOUDSTACK_SECRET", &self.secret);
        command
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        println!("    $ cks-controller {}", args.join(" "));
        let output = self.command(args).stderr(Stdio::inherit()).output()?;
        ensure!(
            output.status.success(),
            "cks-controller {} failed",
            args.join(" ")
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

async fn tenant_flow(
    cli: &Cli,
    api: &cks_controller::cloudstack::CloudStackClient,
    isos: &[BuiltIso],
    out: &Path,
    keep: bool,
) -> Result<()> {
    step("registering both versions (addKubernetesSupportedVersion)");
    let mut versions = Vec::new();
    for iso in isos {
        let added = cli.run(&[
            "version",
            "add",
            "--semver",
            &iso.kubernetes,
            "--url",
            &format!("file://{}", iso.path.display()),
            "--checksum",
            &format!("{{SHA-256}}{}", iso.sha256),
        ])?;
        let added: Value = serde_json::from_str(&added)?;
        let id = added["kubernetessupportedversion"]["id"]
            .as_str()
            .context("version id")?
            .to_string();
        versions.push((iso.kubernetes.clone(), id));
    }
    for (_, id) in &versions {
        wait_version_ready(api, id).await?;
    }
    print!("{}", cli.run(&["version", "list"])?);
    let version_id = |semver: &str| -> Result<String> {
        versions
            .iter()
            .find(|(v, _)| v == semver)
            .map(|(_, id)| id.clone())
            .with_context(|| format!("version {semver} was not registered"))
    };

    step(&format!(
        "creating a cluster: 1 control node + {WORKERS} workers, Kubernetes {CREATE_AT}"
    ));
    let zones = api.call("listZones", &[]).await?;
    let zone = zones["zone"][0]["id"].as_str().context("zone")?.to_string();
    let offerings = api.call("listServiceOfferings", &[]).await?;
    let offering = offerings["serviceoffering"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["cpunumber"] == 2))
        .and_then(|o| o["id"].as_str())
        .context("a 2 vCPU offering")?
        .to_string();
    let id = cli
        .run(&[
            "cluster",
            "create",
            "--name",
            "demo",
            "--zone",
            &zone,
            "--version",
            &version_id(CREATE_AT)?,
            "--offering",
            &offering,
            "--size",
            &WORKERS.to_string(),
        ])?
        .trim()
        .to_string();
    print!("{}", cli.run(&["cluster", "list"])?);

    step("the kubeconfig (getKubernetesClusterConfig)");
    let kubeconfig = cli.run(&["cluster", "kubeconfig", &id])?;
    println!("{kubeconfig}");
    let path = out.join("kubeconfig");
    std::fs::write(&path, &kubeconfig)?;
    step("kubectl get nodes, through the cluster's public IP");
    kubectl_get_nodes(&path, 1 + WORKERS, &format!("v{CREATE_AT}"))?;

    step(&format!(
        "scaling to {SCALED_WORKERS} workers (scaleKubernetesCluster)"
    ));
    print!(
        "{}",
        cli.run(&[
            "cluster",
            "scale",
            &id,
            "--size",
            &SCALED_WORKERS.to_string()
        ])?
    );

    step(&format!(
        "upgrading to Kubernetes {UPGRADE_TO}, one node at a time (upgradeKubernetesCluster)"
    ));
    print!(
        "{}",
        cli.run(&[
            "cluster",
            "upgrade",
            &id,
            "--version",
            &version_id(UPGRADE_TO)?
        ])?
    );
    step("kubectl get nodes: every node upgraded");
    kubectl_get_nodes(&path, 1 + SCALED_WORKERS, &format!("v{UPGRADE_TO}"))?;

    step("stopping the cluster (stopKubernetesCluster): node VMs stopped, disks kept");
    print!("{}", cli.run(&["cluster", "stop", &id])?);
    print!("{}", cli.run(&["cluster", "list"])?);
    step("starting it again (startKubernetesCluster): every node Ready");
    print!("{}", cli.run(&["cluster", "start", &id])?);
    kubectl_get_nodes(&path, 1 + SCALED_WORKERS, &format!("v{UPGRADE_TO}"))?;

    if keep {
        step("the cluster is left running (make demo-stop stops its nodes with cloudsim)");
        println!("    kubectl --kubeconfig {} get nodes", path.display());
        println!("    {} cluster delete {id}", cli.program.display());
        return Ok(());
    }
    step("deleting the cluster (deleteKubernetesCluster)");
    print!("{}", cli.run(&["cluster", "delete", &id])?);
    nothing_left(api).await?;
    println!("    no cluster, VM, network or public IP left");
    Ok(())
}

/// Shows `kubectl get nodes` through the cluster's public IP, then checks that it lists
/// `count` nodes, every one Ready and at `version`.
fn kubectl_get_nodes(kubeconfig: &Path, count: u32, version: &str) -> Result<()> {
    let kubectl = |args: &[&str]| {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(kubeconfig).args(args);
        command
    };
    println!("    $ kubectl get nodes -o wide");
    let status = kubectl(&["get", "nodes", "-o", "wide"])
        .status()
        .context("running kubectl")?;
    ensure!(status.success(), "kubectl get nodes failed");
    let output = kubectl(&["get", "nodes", "-o", "json"])
        .output()
        .context("running kubectl")?;
    ensure!(output.status.success(), "kubectl get nodes -o json failed");
    let nodes: Value = serde_json::from_slice(&output.stdout)?;
    let nodes = nodes["items"].as_array().cloned().unwrap_or_default();
    let wrong: Vec<String> = nodes
        .iter()
        .filter(|node| {
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            !ready || node["status"]["nodeInfo"]["kubeletVersion"] != version
        })
        .map(|node| node["metadata"]["name"].as_str().unwrap_or("?").to_string())
        .collect();
    ensure!(
        nodes.len() == usize::try_from(count).unwrap_or(usize::MAX) && wrong.is_empty(),
        "expected {count} nodes, all Ready at {version}: kubectl lists {}, and these are not: {wrong:?}",
        nodes.len()
    );
    Ok(())
}

/// Checks that the deleted cluster left nothing in CloudStack.
async fn nothing_left(api: &cks_controller::cloudstack::CloudStackClient) -> Result<()> {
    let all = [("listall", "true")];
    let clusters = api.call("listKubernetesClusters", &all).await?;
    ensure!(
        clusters.get("kubernetescluster").is_none(),
        "clusters left: {clusters}"
    );
    for (command, key) in [
        ("listVirtualMachines", "virtualmachine"),
        ("listNetworks", "network"),
        ("listPublicIpAddresses", "publicipaddress"),
    ] {
        let left = api.call(command, &all).await?;
        ensure!(left.get(key).is_none(), "left behind ({command}): {left}");
    }
    Ok(())
}

/// The background services, stopped by pid.
#[derive(Default)]
struct Services {
    children: Vec<(String, Child)>,
}

impl Services {
    fn start(&mut self, out: &Path, name: &str, command: &mut Command) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(out.join("logs").join(format!("{name}.log")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C of the demo does not kill a kept service.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        std::fs::write(
            out.join("pids").join(format!("{name}.pid")),
            child.id().to_string(),
        )?;
        println!(
            "    {name}: pid {}, log {}",
            child.id(),
            out.join("logs").join(format!("{name}.log")).display()
        );
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Keeps the services running after the demo exits.
    fn forget(&mut self) {
        self.children.clear();
    }

    fn stop_all(&mut self, out: &Path) {
        // The controller first: it stops at a step boundary; then the simulator and its nodes.
        while let Some((name, mut child)) = self.children.pop() {
            terminate(child.id());
            let _ = child.wait();
            let _ = std::fs::remove_file(out.join("pids").join(format!("{name}.pid")));
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then SIGKILL after 20 s (cloudsim stops its nodes on SIGTERM).
fn terminate(pid: u32) {
    let pid = pid.to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(&pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
}

fn is_zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

/// `make demo-stop`: stops what `--keep` left running, by the pids it recorded.
fn stop_all(out: &Path) -> Result<()> {
    let pids = out.join("pids");
    let Ok(entries) = std::fs::read_dir(&pids) else {
        println!("nothing to stop");
        return Ok(());
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    // controller.pid sorts before cloudsim.pid when reversed: stop the controller first.
    files.sort();
    files.reverse();
    for file in files {
        let pid = std::fs::read_to_string(&file)?.trim().to_string();
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
        if pid.parse::<u32>().is_ok() && Path::new(&format!("/proc/{pid}")).exists() {
            println!("stopping {name} (pid {pid})");
            if let Ok(pid) = pid.parse() {
                terminate(pid);
            }
        }
        std::fs::remove_file(&file)?;
    }
    Ok(())
}

/// Waits until something accepts TCP connections on `addr` (bounded).
fn wait_http(addr: &str) -> Result<()> {
    for _ in 0..300 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on {addr} after 30 s; see the logs in out/demo/logs")
}

/// The admin's keys from cloudsim's start-up lines (`admin api key:`, `admin secret key:`).
fn read_keys(log: &Path) -> Result<(String, String)> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let find = |label: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(label))
                .map(|v| v.trim().to_string())
        };
        if let (Some(key), Some(secret)) = (find("admin api key:"), find("admin secret key:")) {
            return Ok((key, secret));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "cloudsim did not print the admin's keys; see {}",
        log.display()
    )
}

fn run(program: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(program).args(args).status()?;
    ensure!(
        status.success(),
        "{} {} failed",
        program.display(),
        args.join(" ")
    );
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
