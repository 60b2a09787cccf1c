//! VMs are real: started VMs run the real `cks-agent` with their userdata, find the bundle ISO
//! built by `cks-isobuilder` through the agent's own discovery, reach the controller through
//! the egress forwarders, reach each other over their network, and public IPs really forward.
//!
//! Needs root (network namespaces, containerd), iproute2, containerd, xorriso, skopeo and
//! docker-registry; skipped with a message otherwise. Needs `target/debug/cks-agent` and
//! `target/debug/cks-isobuilder` (`cargo build -p cks-agent -p cks-isobuilder`).

mod common;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cks_controller::agents::{AgentHub, EveryNode, MemoryTokens, NodeKey, NodeStatus};
use cks_controller::pki::{AgentCa, NodeIdentity};
use cks_controller::userdata::{NodeBootstrap, TemplateKind};
use cks_proto::agent::NodeRole;
use cloudsim::nodes::{NetworkMode, NodesConfig, netns};
use cloudsim::{SimConfig, SimHandle, Simulator};
use common::{Client, create_network, seeded_ids};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "cluster-1";
/// Long enough for an agent to enroll, verify and install the bundle on a busy 2-core machine.
const AGENT_WAIT: Duration = Duration::from_secs(180);

// === environment ===

/// `target/debug`, where cargo puts every package's binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

fn binary(name: &str, package: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p {package}` (make test does)",
        path.display()
    );
    path
}

/// True when this machine can run namespaced nodes; otherwise the calling test is skipped
/// visibly (and fails under `CI=true`), see [`cks_fixtures::skip`].
#[track_caller]
fn nodes_possible(what: &str, extra: &[&str]) -> bool {
    use cks_fixtures::skip::{Need, require};
    require(
        what,
        &[
            Need::Root,
            Need::Tools(cloudsim::nodes::NODE_TOOLS),
            Need::Tools(extra),
        ],
    )
}

/// The bundle ISO, built once per test process by the real `cks-isobuilder` from a local
/// upstream; returns its path and sha256.
fn bundle_iso() -> &'static (PathBuf, String) {
    static ISO: OnceLock<(PathBuf, String)> = OnceLock::new();
    ISO.get_or_init(|| {
        let isobuilder = binary("cks-isobuilder", "cks-isobuilder");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cloudsim-nodes-iso");
        let _ = std::fs::remove_dir_all(&out);
        let built = cks_fixtures::upstream::build_isos(
            &isobuilder,
            &[cks_fixtures::upstream::KUBERNETES],
            &out,
        )
        .expect("cks-isobuilder build");
        let iso = built.into_iter().next().expect("one ISO");
        (iso.path, iso.sha256)
    })
}

// === a test controller ===

struct Controller {
    hub: AgentHub,
    addr: SocketAddr,
    ca: Arc<AgentCa>,
    _dir: tempfile::TempDir,
}

impl Controller {
    async fn start() -> Controller {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(AgentCa::load_or_create(&dir.path().join("ca")).expect("CA"));
        let server = ca.issue_server(&["127.0.0.1".into()]).expect("server cert");
        let hub = AgentHub::new(
            ca.clone(),
            Arc::new(MemoryTokens::default()),
            Arc::new(EveryNode),
            Duration::from_secs(1),
        );
        let (addr, _task) = hub
            .clone()
            .spawn("127.0.0.1:0".parse().expect("addr"), server)
            .await
            .expect("agent endpoint");
        Controller {
            hub,
            addr,
            ca,
            _dir: dir,
        }
    }

    fn egress(&self) -> SocketAddrV4 {
        match self.addr {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => panic!("the hub listens on 127.0.0.1"),
        }
    }

    /// Base64 userdata for node `name`, as the controller renders it.
    fn userdata(&self, name: &str, kind: TemplateKind) -> String {
        let token = self.hub.issue_token(
            NodeIdentity {
                cluster_id: CLUSTER.into(),
                node_name: name.into(),
                role: NodeRole::Worker,
            },
            Duration::from_secs(600),
        );
        let bootstrap = NodeBootstrap {
            discovery_timeout_seconds: None,
            addresses: vec![self.addr.to_string()],
            ca_fingerprint: self.ca.fingerprint(),
            enrollment_token: token,
            node_name: name.into(),
            role: "worker".into(),
        };
        STANDARD.encode(bootstrap.render(kind))
    }

    async fn wait(&self, name: &str, what: &str, done: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        self.hub
            .wait_for(&NodeKey::new(CLUSTER, name), what, AGENT_WAIT, done)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }
}

fn bundle_found(status: &NodeStatus) -> bool {
    status.connected
        && status
            .hello
            .as_ref()
            .and_then(|h| h.bundle.as_ref())
            .is_some_and(|b| b.found)
}

fn bundle_installed(status: &NodeStatus) -> bool {
    status.connected
        && status.hello.as_ref().is_some_and(|h| {
            h.steps.iter().any(|s| s.step == "bundle.installed")
                && h.bundle.as_ref().is_some_and(|b| b.verified)
        })
}

// === simulator helpers ===

async fn start_sim(
    state: &Path,
    controller: &Controller,
    public_cidr: &str,
    network: NetworkMode,
) -> SimHandle {
    let mut nodes = NodesConfig::new(binary("cks-agent", "cks-agent"));
    nodes.kubesim_bin = target_dir();
    nodes.egress = vec![controller.egress()];
    nodes.network = network;
    nodes.stop_grace = Duration::from_secs(3);
    let mut config = SimConfig::for_tests();
    config.state_dir = Some(state.to_path_buf());
    config.public_cidr = Some(public_cidr.into());
    config.nodes = Some(nodes);
    Simulator::start(config).await.expect("start simulator")
}

async fn register_bundle(admin: &Client) -> String {
    let (iso, sha256) = bundle_iso();
    let url = format!("file://{}", iso.display());
    let checksum = format!("{{SHA-256}}{sha256}");
    let registered = admin
        .ok(
            "registerIso",
            &[
                ("name", "setup-v1.33.1"),
                ("url", &url),
                ("zoneid", "-1"),
                ("ispublic", "true"),
                ("checksum", &checksum),
            ],
        )
        .await;
    let id = registered["iso"][0]["id"]
        .as_str()
        .expect("iso id")
        .to_owned();
    for _ in 0..600 {
        let listed = admin.ok("listIsos", &[("id", &id)]).await;
        if listed["iso"][0]["isready"] == true {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("ISO {id} never became ready");
}

async fn deploy(client: &Client, network: &str, name: &str, userdata: &str) -> (String, String) {
    let (zone, offering, template) = seeded_ids(client).await;
    let result = client
        .run(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", network),
                ("name", name),
                ("userdata", userdata),
            ],
        )
        .await;
    let vm = &result["virtualmachine"];
    assert_eq!(vm["state"], "Running", "{result}");
    (
        vm["id"].as_str().expect("vm id").to_owned(),
        vm["nic"][0]["ipaddress"].as_str().expect("ip").to_owned(),
    )
}

/// A TCP server inside a node's namespace that answers every connection with `reply`.
fn serve_in_node(ns: &Path, port: u16, reply: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = netns::bind(ns, SocketAddr::from(([0, 0, 0, 0], port))).expect("bind in node");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(reply.as_bytes()).await;
        }
    })
}

/// What a server behind `addr` answers when reached from the host (bounded retries while the
/// forwarders come up); empty when the connection is closed without an answer.
async fn ask_from_host(addr: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer).await;
            if !answer.is_empty() {
                return answer;
            }
            last = answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

/// One connection's answer (empty when refused or reset).
async fn answer_once(addr: &str) -> String {
    let mut answer = String::new();
    if let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await {
        let _ = stream.read_to_string(&mut answer).await;
    }
    answer
}

/// The same from inside a node's namespace.
async fn ask_from_node(ns: &Path, addr: &str) -> String {
    let ns = ns.to_path_buf();
    let addr: SocketAddr = addr.parse().expect("addr");
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        for _ in 0..100 {
            if let Ok(mut stream) = netns::connect(&ns, addr, Duration::from_secs(2)) {
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                if !answer.is_empty() {
                    return answer;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        String::new()
    })
    .await
    .expect("join")
}

fn netns_names() -> Vec<String> {
    netns::list("")
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_run_agents_find_the_iso_reach_each_other_and_public_ports_forward() {
    if !nodes_possible("the real-nodes test", &[]) {
        return;
    }
    let controller = Controller::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let sim = start_sim(
        state.path(),
        &controller,
        "127.77.0.0/24",
        NetworkMode::Netns,
    )
    .await;
    let admin = Client::new(&sim.endpoint(), sim.admin_keys());
    let user = Client::new(&sim.endpoint(), sim.user_keys());
    let iso = register_bundle(&admin).await;
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "k8s-net").await;

    // One node per userdata family: cloud-init and Ignition.
    let (vm1, ip1) = deploy(
        &user,
        &network,
        "node-1",
        &controller.userdata("node-1", TemplateKind::CloudInit),
    )
    .await;
    let (vm2, ip2) = deploy(
        &user,
        &network,
        "node-2",
        &controller.userdata("node-2", TemplateKind::Ignition),
    )
    .await;
    let listed = user.ok("listVirtualMachines", &[("id", &vm1)]).await;
    assert_eq!(
        listed["virtualmachine"][0]["details"]["simulator.node.network"], "netns",
        "{listed}"
    );
    for vm in [&vm1, &vm2] {
        user.run("attachIso", &[("id", &iso), ("virtualmachineid", vm)])
            .await;
    }

    // Both agents enroll through the egress forwarder, find the CD-ROM and install from it.
    for name in ["node-1", "node-2"] {
        let status = controller
            .wait(name, "bundle installed", bundle_installed)
            .await;
        let bundle = status.hello.and_then(|h| h.bundle).expect("bundle info");
        assert!(bundle.found && bundle.verified, "{name}: {bundle:?}");
        assert_eq!(bundle.kubernetes_version, "1.33.1", "{name}");
    }
    let node1 = sim.node(&vm1).expect("node-1 runs");
    let node2 = sim.node(&vm2).expect("node-2 runs");
    let ns1 = node1.netns.clone().expect("node-1 namespace");
    let ns2 = node2.netns.clone().expect("node-2 namespace");
    assert!(!node1.pids.is_empty());
    assert!(
        node1.root.join("etc/cks-agent/config.toml").is_file(),
        "userdata applied under the node's root"
    );

    // The nodes reach each other on their network.
    let servers = vec![
        serve_in_node(&ns1, 8080, "node-1"),
        serve_in_node(&ns2, 8080, "node-2"),
    ];
    assert_eq!(ask_from_node(&ns1, &format!("{ip2}:8080")).await, "node-2");
    assert_eq!(ask_from_node(&ns2, &format!("{ip1}:8080")).await, "node-1");

    // Public IP: port forwarding to the right node, a closed firewall, a load balancer.
    let associated = user
        .run("associateIpAddress", &[("networkid", &network)])
        .await;
    let ip_id = associated["ipaddress"]["id"]
        .as_str()
        .expect("ip id")
        .to_owned();
    let public = associated["ipaddress"]["ipaddress"]
        .as_str()
        .expect("ip")
        .to_owned();
    assert!(public.starts_with("127.77.0."), "{public}");
    for (port, vm, open) in [
        ("2222", &vm2, "true"),
        ("2223", &vm1, "true"),
        ("2224", &vm1, "false"),
    ] {
        user.run(
            "createPortForwardingRule",
            &[
                ("ipaddressid", &ip_id),
                ("protocol", "tcp"),
                ("publicport", port),
                ("privateport", "8080"),
                ("virtualmachineid", vm),
                ("openfirewall", open),
            ],
        )
        .await;
    }
    assert_eq!(ask_from_host(&format!("{public}:2222")).await, "node-2");
    assert_eq!(ask_from_host(&format!("{public}:2223")).await, "node-1");
    assert_eq!(
        answer_once(&format!("{public}:2224")).await,
        "",
        "no firewall rule: the connection is refused"
    );
    // Hairpin: a node reaching its network's public IP lands on the rule's target.
    assert_eq!(
        ask_from_node(&ns1, &format!("{public}:2222")).await,
        "node-2"
    );

    let lb = user
        .ok(
            "createLoadBalancerRule",
            &[
                ("publicipid", &ip_id),
                ("name", "api"),
                ("algorithm", "roundrobin"),
                ("publicport", "6443"),
                ("privateport", "8080"),
            ],
        )
        .await;
    let lb_id = lb["id"].as_str().expect("lb id").to_owned();
    user.wait_job(lb["jobid"].as_str().expect("jobid")).await;
    user.run(
        "assignToLoadBalancerRule",
        &[
            ("id", &lb_id),
            ("virtualmachineids", &format!("{vm1},{vm2}")),
        ],
    )
    .await;
    let first = ask_from_host(&format!("{public}:6443")).await;
    assert!(first == "node-1" || first == "node-2", "{first:?}");
    let mut answers = vec![first];
    for _ in 0..3 {
        answers.push(ask_from_host(&format!("{public}:6443")).await);
    }
    answers.sort();
    assert_eq!(answers, vec!["node-1", "node-1", "node-2", "node-2"]);
    for server in servers {
        server.abort();
    }

    // Stop kills the whole tree and removes the namespace; start keeps the disk: the agent
    // comes back with the identity it enrolled (the token was one-time).
    user.run("stopVirtualMachine", &[("id", &vm1)]).await;
    controller
        .wait("node-1", "disconnected", |s| !s.connected)
        .await;
    let mut stopped = sim.node(&vm1).expect("disk kept");
    for _ in 0..100 {
        if stopped.pids.is_empty() && stopped.netns.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopped = sim.node(&vm1).expect("disk kept");
    }
    assert!(stopped.pids.is_empty(), "{:?}", stopped.pids);
    assert_eq!(stopped.netns, None);
    user.run("startVirtualMachine", &[("id", &vm1)]).await;
    controller
        .wait("node-1", "reconnected, bundle found again", |s| {
            s.sessions >= 2 && bundle_found(s)
        })
        .await;

    // Destroy removes the node and its disk.
    admin
        .run(
            "destroyVirtualMachine",
            &[("id", &vm1), ("expunge", "true")],
        )
        .await;
    for _ in 0..100 {
        if sim.node(&vm1).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sim.node(&vm1).is_none(), "the VM's directory is gone");

    // Shutdown leaves nothing behind.
    let pids = sim.node(&vm2).expect("node-2").pids;
    drop(sim);
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.contains(&vm2) || n.contains(&vm1) || n.contains(&network))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in pids {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "pid {pid} still runs: {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_nodes_reach_the_controller_directly_and_restart_with_the_simulator() {
    if !nodes_possible("the loopback-nodes test", &[]) {
        return;
    }
    let controller = Controller::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let sim = start_sim(
        state.path(),
        &controller,
        "127.78.0.0/24",
        NetworkMode::Loopback,
    )
    .await;
    let admin = Client::new(&sim.endpoint(), sim.admin_keys());
    let iso = register_bundle(&admin).await;
    let (zone, _, _) = seeded_ids(&admin).await;
    let network = create_network(&admin, &zone, "lo-net").await;
    let (vm, _) = deploy(
        &admin,
        &network,
        "lo-node",
        &controller.userdata("lo-node", TemplateKind::CloudInit),
    )
    .await;
    admin
        .run("attachIso", &[("id", &iso), ("virtualmachineid", &vm)])
        .await;
    let listed = admin.ok("listVirtualMachines", &[("id", &vm)]).await;
    assert_eq!(
        listed["virtualmachine"][0]["details"]["simulator.node.network"], "loopback-only",
        "{listed}"
    );
    controller
        .wait("lo-node", "bundle found", bundle_found)
        .await;
    assert_eq!(sim.node(&vm).expect("node").netns, None);

    // A restart of the simulator starts the VM that was running again.
    let pids = sim.node(&vm).expect("node").pids;
    drop(sim);
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z"),
            "pid {pid} survived: {stat}"
        );
    }
    let sim = start_sim(
        state.path(),
        &controller,
        "127.78.0.0/24",
        NetworkMode::Loopback,
    )
    .await;
    let admin = Client::new(&sim.endpoint(), sim.admin_keys());
    let listed = admin.ok("listVirtualMachines", &[("id", &vm)]).await;
    assert_eq!(listed["virtualmachine"][0]["state"], "Running", "{listed}");
    controller
        .wait("lo-node", "reconnected after the restart", |s| {
            s.sessions >= 2 && bundle_found(s)
        })
        .await;
}

// === shared networks, external load balancers, keys, faults, boot semantics ===

/// Deploys `name` on `network` with `userdata` and extra arguments; returns id and address.
async fn deploy_with(
    client: &Client,
    network: &str,
    name: &str,
    userdata: &str,
    extra: &[(&str, &str)],
) -> (String, String) {
    let (zone, offering, template) = seeded_ids(client).await;
    let mut args = vec![
        ("zoneid", zone.as_str()),
        ("serviceofferingid", offering.as_str()),
        ("templateid", template.as_str()),
        ("networkids", network),
        ("name", name),
        ("userdata", userdata),
    ];
    args.extend_from_slice(extra);
    let result = client.run("deployVirtualMachine", &args).await;
    let vm = &result["virtualmachine"];
    assert_eq!(vm["state"], "Running", "{result}");
    (
        vm["id"].as_str().expect("vm id").to_owned(),
        vm["nic"][0]["ipaddress"].as_str().expect("ip").to_owned(),
    )
}

/// Waits until VM `vm`'s node has its namespace (its boot runs after the start job).
async fn booted_namespace(sim: &SimHandle, vm: &str) -> PathBuf {
    for _ in 0..300 {
        if let Some(ns) = sim.node(vm).and_then(|n| n.netns) {
            return ns;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {vm} never got its namespace");
}

/// Waits until VM `vm`'s node has no process and no namespace left.
async fn halted(sim: &SimHandle, vm: &str) {
    for _ in 0..300 {
        let node = sim.node(vm).expect("disk kept");
        if node.pids.is_empty() && node.netns.is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {vm} did not stop");
}

async fn shared_network(admin: &Client, zone: &str) -> String {
    let offerings = admin
        .ok(
            "listNetworkOfferings",
            &[("name", "DefaultSharedNetworkOffering")],
        )
        .await;
    let offering = offerings["networkoffering"][0]["id"]
        .as_str()
        .expect("offering");
    let created = admin
        .ok(
            "createNetwork",
            &[
                ("name", "shared"),
                ("networkofferingid", offering),
                ("zoneid", zone),
                ("gateway", "10.70.0.254"),
                ("netmask", "255.255.255.0"),
                ("startip", "10.70.0.10"),
                ("endip", "10.70.0.20"),
                ("vlan", "70"),
            ],
        )
        .await;
    created["network"]["id"]
        .as_str()
        .expect("network id")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_network_nodes_get_their_range_keys_and_an_external_load_balancer() {
    if !nodes_possible("the shared-network test", &[]) {
        return;
    }
    let controller = Controller::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let sim = start_sim(
        state.path(),
        &controller,
        "127.79.0.0/24",
        NetworkMode::Netns,
    )
    .await;
    let admin = Client::new(&sim.endpoint(), sim.admin_keys());
    let user = Client::new(&sim.endpoint(), sim.user_keys());
    let (zone, _, _) = seeded_ids(&admin).await;
    let network = shared_network(&admin, &zone).await;
    let key = cloudsim::sshkey::generate("ops@example").expect("key");
    user.ok(
        "registerSSHKeyPair",
        &[("name", "ops"), ("publickey", &key.public_key)],
    )
    .await;
    sim.set_faults(cloudsim::faults::FaultConfig {
        never_boot: Some(cloudsim::faults::NeverBoot {
            rate: 1.0,
            name_pattern: Some("hang-*".into()),
        }),
        ..Default::default()
    });

    // A user's nodes on the admin's shared network: addresses from its range, its gateway.
    let (vm1, ip1) = deploy_with(
        &user,
        &network,
        "lb-1",
        &controller.userdata("lb-1", TemplateKind::CloudInit),
        &[("keypair", "ops")],
    )
    .await;
    let (vm2, ip2) = deploy_with(
        &user,
        &network,
        "lb-2",
        &controller.userdata("lb-2", TemplateKind::Ignition),
        &[],
    )
    .await;
    let (hung, _) = deploy_with(
        &user,
        &network,
        "hang-1",
        &controller.userdata("hang-1", TemplateKind::CloudInit),
        &[],
    )
    .await;
    assert_eq!((ip1.as_str(), ip2.as_str()), ("10.70.0.10", "10.70.0.11"));
    let ns1 = booted_namespace(&sim, &vm1).await;
    let ns2 = booted_namespace(&sim, &vm2).await;
    let name1 = ns1.file_name().and_then(|n| n.to_str()).expect("ns name");
    let route = Command::new("ip")
        .args(["-n", name1, "route", "show", "default"])
        .output()
        .expect("ip route");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("via 10.70.0.254"), "{route}");

    // The key pair lands where cloud-init puts it.
    let node1 = sim.node(&vm1).expect("node-1");
    let keys = node1.root.join("root/.ssh/authorized_keys");
    for _ in 0..100 {
        if keys.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&keys).expect("authorized_keys");
    assert_eq!(text.trim(), key.public_key);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys).expect("mode").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Nodes of the shared network reach each other.
    let servers = vec![
        serve_in_node(&ns1, 8080, "lb-1"),
        serve_in_node(&ns2, 8080, "lb-2"),
    ];
    assert_eq!(ask_from_node(&ns1, &format!("{ip2}:8080")).await, "lb-2");

    // The operator's load balancer, outside the public range: from the host and from inside
    // a node (hairpin), round-robin over both nodes.
    let lb = "127.79.1.10:6443";
    sim.add_external_lb(
        "127.79.1.10".parse().expect("ip"),
        6443,
        vec![vm1.clone(), vm2.clone()],
        8080,
    )
    .expect("external lb");
    let first = ask_from_host(lb).await;
    assert!(first == "lb-1" || first == "lb-2", "{first:?}");
    let mut answers = vec![first];
    for _ in 0..3 {
        answers.push(ask_from_host(lb).await);
    }
    answers.sort();
    assert_eq!(answers, vec!["lb-1", "lb-1", "lb-2", "lb-2"]);
    let inside = ask_from_node(&ns2, lb).await;
    assert!(inside == "lb-1" || inside == "lb-2", "{inside:?}");
    // A stopped target leaves the rotation.
    user.run("stopVirtualMachine", &[("id", &vm2)]).await;
    for _ in 0..4 {
        assert_eq!(ask_from_host(lb).await, "lb-1");
    }
    for server in servers {
        server.abort();
    }

    // The VM that never boots: Running, its NIC plugged, nothing running, no agent.
    let listed = user.ok("listVirtualMachines", &[("id", &hung)]).await;
    assert_eq!(listed["virtualmachine"][0]["state"], "Running");
    booted_namespace(&sim, &hung).await;
    let node = sim.node(&hung).expect("hung node");
    assert!(node.pids.is_empty(), "{:?}", node.pids);
    assert!(!node.log_dir.join("agent.log").exists());
    assert!(
        sim.fault_log()
            .iter()
            .any(|e| e.fault == "never_boot" && e.target.as_deref() == Some("hang-1"))
    );
    // Without the fault, its next start boots it.
    sim.set_faults(cloudsim::faults::FaultConfig::default());
    user.run("stopVirtualMachine", &[("id", &hung)]).await;
    halted(&sim, &hung).await;
    user.run("startVirtualMachine", &[("id", &hung)]).await;
    controller
        .wait("hang-1", "the agent of the formerly hung node", |s| {
            s.connected
        })
        .await;
}

/// kubeadm's kubelet drop-in and the kubelet unit, as the bundle installs them.
const KUBELET_SERVICE: &str = "[Unit]\nDescription=kubelet\n\n[Service]\nExecStart=/opt/bin/kubelet\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n";
const KUBEADM_DROPIN: &str = "[Service]\nEnvironment=\"KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf\"\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml\"\nEnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\nExecStart=\nExecStart=/opt/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS\n";
/// A CNI stand-in: any DaemonSet other than kube-proxy makes kubesim's nodes Ready.
const CNI: &str = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: cni\n  namespace: kube-system\nspec:\n  selector:\n    matchLabels: {app: cni}\n  template:\n    metadata:\n      labels: {app: cni}\n    spec:\n      hostNetwork: true\n      tolerations: [{operator: Exists}]\n      containers: [{name: cni, image: example.local/cni:v1}]\n";

/// Installs what the bundle would on a node: the kubelet unit and drop-in, and `/opt/bin`
/// wrappers running kubesim's kubelet and kubeadm.
fn install_kubelet(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(units.join("kubelet.service.d")).expect("units");
    std::fs::write(units.join("kubelet.service"), KUBELET_SERVICE).expect("unit");
    std::fs::write(
        units.join("kubelet.service.d/10-kubeadm.conf"),
        KUBEADM_DROPIN,
    )
    .expect("drop-in");
    for program in ["kubelet", "kubeadm"] {
        let path = root.join("opt/bin").join(program);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("opt/bin");
        std::fs::write(
            &path,
            format!("#!/bin/sh\nexec \"$KUBESIM_BIN/{program}\" \"$@\"\n"),
        )
        .expect("wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("mode");
    }
}

/// Runs a program inside the node and returns its stdout, asserting success.
async fn in_node(sim: &SimHandle, vm: &str, program: &Path, args: &[&str]) -> String {
    let out = sim
        .node_exec(vm, program, args, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{program:?} {args:?}: {}", cloudsim::nodes::error_chain(&e)));
    assert!(
        out.status.success(),
        "{program:?} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The node's Ready condition status and heartbeat, as kubectl inside the node reads them.
async fn node_ready(
    sim: &SimHandle,
    vm: &str,
    root: &Path,
    name: &str,
) -> Option<(String, String)> {
    let admin_conf = root.join("etc/kubernetes/admin.conf");
    let kubeconfig = format!("--kubeconfig={}", admin_conf.display());
    let out = sim
        .node_exec(
            vm,
            "/usr/bin/kubectl",
            &[
                &kubeconfig,
                "get",
                "node",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].lastHeartbeatTime}",
            ],
            Duration::from_secs(30),
        )
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, heartbeat) = text.trim().split_once(' ')?;
    out.status
        .success()
        .then(|| (status.to_owned(), heartbeat.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_kubelet_starts_at_boot_and_the_node_comes_back_ready() {
    if !nodes_possible("the kubelet-at-boot test", &["kubectl"]) {
        return;
    }
    let controller = Controller::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let sim = start_sim(
        state.path(),
        &controller,
        "127.80.0.0/24",
        NetworkMode::Netns,
    )
    .await;
    let user = Client::new(&sim.endpoint(), sim.user_keys());
    let (zone, _, _) = seeded_ids(&user).await;
    let network = create_network(&user, &zone, "kube-net").await;
    let (vm, ip) = deploy(
        &user,
        &network,
        "kube-1",
        &controller.userdata("kube-1", TemplateKind::CloudInit),
    )
    .await;
    booted_namespace(&sim, &vm).await;
    let root = sim.node(&vm).expect("node").root;
    install_kubelet(&root);
    let systemctl = state.path().join("node-bin/systemctl");
    let log = root.join("var/log/kubesim/systemctl.log");

    // A control plane, as the agent would make it: kubeadm init, kubelet enabled, a CNI.
    let endpoint = format!("{ip}:6443");
    let init = in_node(
        &sim,
        &vm,
        &root.join("opt/bin/kubeadm"),
        &[
            "init",
            "--control-plane-endpoint",
            &endpoint,
            "--apiserver-advertise-address",
            &ip,
            "--pod-network-cidr",
            "10.244.0.0/16",
            "--node-name",
            "kube-1",
        ],
    )
    .await;
    assert!(init.contains("kube-apiserver is healthy"), "{init}");
    in_node(&sim, &vm, &systemctl, &["enable", "kubelet"]).await;
    let manifest = root.join("root/cni.yaml");
    std::fs::write(&manifest, CNI).expect("manifest");
    let kubeconfig = format!(
        "--kubeconfig={}",
        root.join("etc/kubernetes/admin.conf").display()
    );
    let file = manifest.display().to_string();
    in_node(
        &sim,
        &vm,
        Path::new("/usr/bin/kubectl"),
        &[&kubeconfig, "apply", "-f", &file],
    )
    .await;
    let mut before = None;
    for _ in 0..90 {
        if let Some((status, heartbeat)) = node_ready(&sim, &vm, &root, "kube-1").await
            && status == "True"
        {
            before = Some(heartbeat);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before = before.expect("kube-1 Ready before the stop");

    // Stop and start: nothing but the boot starts the kubelet again (the agent does not).
    user.run("stopVirtualMachine", &[("id", &vm)]).await;
    halted(&sim, &vm).await;
    user.run("startVirtualMachine", &[("id", &vm)]).await;
    booted_namespace(&sim, &vm).await;
    let mut after = None;
    for _ in 0..120 {
        if let Some((status, heartbeat)) = node_ready(&sim, &vm, &root, "kube-1").await
            && status == "True"
            && heartbeat != before
        {
            after = Some(heartbeat);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(after.is_some(), "kube-1 Ready again with a fresh heartbeat");
    let active = in_node(&sim, &vm, &systemctl, &["is-active", "kubelet"]).await;
    assert_eq!(active.trim(), "active");
    let calls = std::fs::read_to_string(&log).expect("systemctl log");
    assert!(
        calls.contains("systemctl is-enabled --quiet kubelet.service")
            && calls.contains("systemctl start kubelet.service"),
        "{calls}"
    );

    // Disabled, a reboot leaves it stopped, as systemd would.
    in_node(&sim, &vm, &systemctl, &["disable", "kubelet"]).await;
    let checks = |text: &str| text.matches("is-enabled --quiet kubelet.service").count();
    let seen = checks(&calls);
    user.run("rebootVirtualMachine", &[("id", &vm)]).await;
    for _ in 0..300 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if checks(&text) > seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = sim
        .node_exec(
            &vm,
            &systemctl,
            &["is-active", "kubelet"],
            Duration::from_secs(30),
        )
        .await
        .expect("systemctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inactive");
}
