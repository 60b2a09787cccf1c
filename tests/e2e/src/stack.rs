//! The whole system in one process, for end-to-end tests: bundle ISOs built by the real
//! `cks-isobuilder` from a local upstream, the CloudStack simulator running VMs as real nodes
//! (`cks-agent` + the Kubernetes stand-ins, in network namespaces), and the controller in
//! front of it, with signed clients for an admin and a user.

use std::net::{SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use cks_controller::cloudstack::{ClientConfig, CloudStackClient};
use cks_controller::config::Config;
use cks_controller::server::{self, Running};
pub use cks_fixtures::upstream::{BuiltIso, build_isos};
use cloudsim::nodes::NodesConfig;
use cloudsim::{SimConfig, SimHandle, Simulator};
use serde_json::Value;
use tokio::time::Instant;

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests on one host).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A signed client.
///
/// # Errors
/// The endpoint is not a URL.
pub fn client(endpoint: &str, api_key: &str, secret_key: &str) -> Result<CloudStackClient> {
    let mut config = ClientConfig::new(endpoint, api_key, secret_key);
    config.rate_limit = None;
    Ok(CloudStackClient::new(config)?)
}

/// Where the stack's programs are.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `cks-isobuilder`.
    pub isobuilder: PathBuf,
    /// `cks-agent`, run on every node.
    pub agent: PathBuf,
    /// The directory of the kubesim stand-ins (`kubeadm`, `kubelet`, `systemctl`).
    pub kubesim_bin: PathBuf,
    /// `cks-controller`, for tests that run it as a process (to kill it).
    pub controller: PathBuf,
}

impl Programs {
    /// The binaries cargo built next to the running test (`target/<profile>`).
    ///
    /// # Errors
    /// One is missing (the message says what to build).
    pub fn beside_test() -> Result<Programs> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("target/<profile>/deps/<test>")?
            .to_path_buf();
        let find = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            if !path.is_file() {
                bail!(
                    "{} not found: build the workspace's binaries first (`cargo build --workspace --bins`, as make test does)",
                    path.display()
                );
            }
            Ok(path)
        };
        find("kubeadm")?;
        find("kubelet")?;
        Ok(Programs {
            isobuilder: find("cks-isobuilder")?,
            agent: find("cks-agent")?,
            controller: find("cks-controller")?,
            kubesim_bin: dir,
        })
    }
}

/// True when this machine can run namespaced nodes with the whole stack; otherwise the calling
/// test is skipped visibly (and fails under `CI=true`), see [`cks_fixtures::skip`].
#[track_caller]
pub fn nodes_possible(what: &str) -> bool {
    use cks_fixtures::skip::{Need, require};
    require(
        what,
        &[
            Need::Root,
            Need::Tools(cloudsim::nodes::NODE_TOOLS),
            Need::Tools(&["kubectl"]),
        ],
    )
}

/// A public address range for one stack's simulator, inside 127.0.0.0/8 but away from the
/// simulator's default 127.64.0.0/16 (which `make demo` uses): tests running beside a
/// `make demo KEEP=1` must not hand out, and `kubectl` must not reach, the demo's addresses.
pub fn private_public_range() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("127.{}.0.0/16", 100 + (nanos ^ std::process::id()) % 100)
}

/// `cks-controller serve` as a child process, so a test can kill it with SIGKILL mid-work and
/// start it again on the same data directory and ports.
pub struct ControllerProcess {
    program: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl ControllerProcess {
    /// Starts the controller; returns once its API answers.
    ///
    /// # Errors
    /// It could not start or never listened.
    pub fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .arg("serve")
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting cks-controller")?;
        self.child = Some(child);
        let api = self
            .env
            .iter()
            .find(|(k, _)| k == cks_controller::config::ENV_API_LISTEN)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        for _ in 0..300 {
            if std::net::TcpStream::connect(&api).is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                // It died starting (a crash point in resuming, with crash points armed).
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "cks-controller did not listen on {api}; see {}",
            self.log.display()
        )
    }

    /// Arms the controller's crash points with the ledger at `path` (from its next start): it
    /// then kills itself (abort) at every crash point not yet in the ledger.
    pub fn arm_crash_points(&mut self, path: &Path) {
        self.env
            .retain(|(k, _)| k != cks_controller::config::ENV_CRASH_LEDGER);
        self.env.push((
            cks_controller::config::ENV_CRASH_LEDGER.to_string(),
            path.display().to_string(),
        ));
    }

    /// True while the process runs (false once it crashed or was killed).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Starts the controller again if it died; true when it had to.
    ///
    /// # Errors
    /// It could not start.
    pub fn revive(&mut self) -> Result<bool> {
        if self.is_running() {
            return Ok(false);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.start()?;
        Ok(true)
    }

    /// SIGKILL: no shutdown, no step boundary, as a crash or a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The simulator with real nodes and the controller in front of it.
pub struct Stack {
    /// The simulator.
    pub sim: SimHandle,
    /// The controller, in this process.
    pub controller: Option<Running>,
    /// Or the controller as a child process ([`Stack::start_process`]).
    pub process: Option<ControllerProcess>,
    /// The API address (either kind of controller).
    api: SocketAddr,
    /// The admin, through the controller.
    pub admin: CloudStackClient,
    /// The simulator's user, through the controller.
    pub user: CloudStackClient,
    /// Scratch space (state, kubeconfigs).
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Starts the simulator (real nodes, egress to the controller's agent endpoint) and the
    /// controller.
    ///
    /// # Errors
    /// Something could not start.
    pub async fn start(programs: &Programs) -> Result<Stack> {
        Self::start_with(programs, false, true).await
    }

    /// Like [`Stack::start`], with the controller accepting enrollments from any address: for
    /// nodes on a shared network, whose own guest address the simulator cannot originate
    /// connections from on this host (isolated networks' source NAT addresses it can).
    ///
    /// # Errors
    /// Something could not start.
    pub async fn start_any_source(programs: &Programs) -> Result<Stack> {
        Self::start_with(programs, false, false).await
    }

    /// Like [`Stack::start`], with the controller as a child process on fixed ports
    /// ([`Stack::process`]).
    ///
    /// # Errors
    /// Something could not start.
    pub async fn start_process(programs: &Programs) -> Result<Stack> {
        Self::start_with(programs, true, true).await
    }

    async fn start_with(
        programs: &Programs,
        as_process: bool,
        check_source: bool,
    ) -> Result<Stack> {
        let dir = tempfile::tempdir()?;
        let agent_port = free_port()?;
        let agents = SocketAddrV4::new([127, 0, 0, 1].into(), agent_port);
        let mut nodes = NodesConfig::new(programs.agent.clone());
        nodes.kubesim_bin = programs.kubesim_bin.clone();
        nodes.egress = vec![agents];
        let mut config = SimConfig::for_tests();
        config.state_dir = Some(dir.path().join("cloudsim"));
        config.nodes = Some(nodes);
        config.public_cidr = Some(private_public_range());
        let sim = Simulator::start(config).await?;
        let keys = sim.admin_keys().clone();
        let data_dir = dir.path().join("controller");

        let (controller, process, api) = if as_process {
            let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            use cks_controller::config as c;
            let env: Vec<(String, String)> = [
                (c::ENV_ENDPOINT, sim.endpoint()),
                (c::ENV_API_KEY, keys.api_key.clone()),
                (c::ENV_SECRET_KEY, keys.secret_key.clone()),
                (c::ENV_API_LISTEN, api.to_string()),
                (c::ENV_AGENTS_LISTEN, agents.to_string()),
                (c::ENV_DATA_DIR, data_dir.display().to_string()),
                (c::ENV_AGENTS_CHECK_SOURCE, check_source.to_string()),
                ("RUST_LOG", "info".to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let mut process = ControllerProcess {
                program: programs.controller.clone(),
                env,
                log: dir.path().join("controller.log"),
                child: None,
            };
            process.start()?;
            (None, Some(process), api)
        } else {
            let file = format!(
                "data_dir = {data_dir:?}\n[cloudstack]\nendpoint = {:?}\napi_key = {:?}\nsecret_key = {:?}\n\
                 [api]\nlisten = \"127.0.0.1:0\"\n[agents]\nlisten = \"{agents}\"\n\
                 check_enrollment_source = {check_source}\n",
                sim.endpoint(),
                keys.api_key,
                keys.secret_key
            );
            let config = Config::from_sources(None, Some(&file), &Default::default())?;
            let controller = server::start(&config).await?;
            let api = controller.api_addr;
            (Some(controller), None, api)
        };
        let endpoint = format!("http://{api}/client/api");
        let admin = client(&endpoint, &keys.api_key, &keys.secret_key)?;
        let user_keys = sim.user_keys();
        let user = client(&endpoint, &user_keys.api_key, &user_keys.secret_key)?;
        Ok(Stack {
            sim,
            controller,
            process,
            api,
            admin,
            user,
            dir,
        })
    }

    /// The controller's API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// Registers `iso` as a supported version and waits until its ISO is Ready.
    ///
    /// # Errors
    /// The controller refused it or the ISO did not become Ready.
    pub async fn add_version(&self, iso: &BuiltIso) -> Result<String> {
        let url = format!("file://{}", iso.path.display());
        let checksum = format!("{{SHA-256}}{}", iso.sha256);
        let out = self
            .admin
            .call(
                "addKubernetesSupportedVersion",
                &[
                    ("semanticversion", &iso.kubernetes),
                    ("url", &url),
                    ("checksum", &checksum),
                    ("mincpunumber", "2"),
                    ("minmemory", "2048"),
                ],
            )
            .await?;
        let id = out["kubernetessupportedversion"]["id"]
            .as_str()
            .context("version id")?
            .to_string();
        wait_version_ready(&self.admin, &id).await?;
        Ok(id)
    }

    /// The zone and the 2 vCPU / 2 GB offering.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn zone_and_offering(&self) -> Result<(String, String)> {
        let zones = self.user.call("listZones", &[]).await?;
        let zone = zones["zone"][0]["id"].as_str().context("zone")?.to_string();
        let offerings = self.user.call("listServiceOfferings", &[]).await?;
        let offering = offerings["serviceoffering"]
            .as_array()
            .and_then(|o| {
                o.iter()
                    .find(|o| o["cpunumber"] == 2 && o["memory"] == 2048)
            })
            .and_then(|o| o["id"].as_str())
            .context("the 2 vCPU / 2 GB offering")?
            .to_string();
        Ok((zone, offering))
    }

    /// Waits for an async job of the controller; returns its `jobresult`.
    ///
    /// # Errors
    /// The job failed or did not finish in `timeout`.
    pub async fn wait_job(
        &self,
        client: &CloudStackClient,
        job_id: &str,
        timeout: Duration,
    ) -> Result<Value> {
        Ok(client.wait_job(job_id, Instant::now() + timeout).await?)
    }

    /// Stops the controller, then the simulator (and its nodes).
    pub async fn stop(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        self.sim.shutdown().await;
    }
}

/// Waits until the ISO of version `id` is Ready in CloudStack (at most a minute).
///
/// # Errors
/// The ISO failed to download, never became Ready, or the API failed.
pub async fn wait_version_ready(api: &CloudStackClient, id: &str) -> Result<()> {
    for _ in 0..600 {
        let list = api
            .call("listKubernetesSupportedVersions", &[("id", id)])
            .await?;
        match list["kubernetessupportedversion"][0]["isostate"].as_str() {
            Some("Ready") => return Ok(()),
            Some("Failed") => bail!("the ISO of version {id} failed to download"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bail!("the ISO of version {id} never became Ready")
}

/// Runs the real `kubectl` with `kubeconfig`; returns stdout.
///
/// # Errors
/// kubectl failed.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        output.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
