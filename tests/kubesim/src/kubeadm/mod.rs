//! The `kubeadm` stand-in: `init`, `join`, `token create`, `init phase upload-certs`, `reset`,
//! `upgrade apply|node`, `certs renew`, `version`.
//!
//! It keeps kubeadm's contract where the agent relies on it: the same sub-commands and flags
//! (unknown flags refused as cobra does; secrets may come in a `--config` file instead, see
//! [`crate::config`]), the same files written under the node's root (`/etc/kubernetes/*.conf`
//! with real client certificates, `pki/` with the cluster CA and an API server certificate
//! for the advertise address, the endpoint and the extra SANs, static pod manifests with the
//! real components' flags, `/var/lib/kubelet/config.yaml`, `kubeadm-flags.env`), the same
//! join command printed, the same failures (a second `init` or `join` fails preflight; a wrong
//! token or CA hash is refused; an expired token or certificate key is refused; an upgrade
//! past kubeadm's own version or by more than one minor is refused) and exit codes.
//!
//! Like kubeadm, `init` and `join` end with the `kubelet-start` phase: `systemctl restart
//! kubelet` (the `systemctl` found in `PATH`, only when the node has kubesim binaries, i.e.
//! `KUBESIM_BIN` is set; a failure is a warning, as with kubeadm) and then wait for the control
//! plane's API server to listen, or for a worker's kubelet to post its Node status. `reset`
//! stops the kubelet. `upgrade` waits for the kubelet to restart each upgraded static pod from
//! its new manifest (and for the API server to listen again).

mod addons;
mod files;

use std::fmt::Write as _;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use self::files::ControlPlaneSpec;
use crate::cluster::{BootstrapToken, ClusterDir, ClusterState, Expiring, LockedCluster, Node};
use crate::flags::{FlagSpec, Parsed, parse_duration_secs};
use crate::pki::CertificateAuthority;

/// Default bootstrap token lifetime (kubeadm's `--token-ttl` default, 24h).
const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// How long uploaded certificates stay (kubeadm deletes the Secret after two hours).
const CERTIFICATE_KEY_TTL_SECS: u64 = 2 * 3600;
/// kubeadm's default service CIDR.
const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
/// How long kubeadm waits for the control plane or the kubelet by default (kubeadm: 4m).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);
/// kubeadm's hint after every error.
const STACK_HINT: &str = "To see the stack trace of this error execute with --v=5 or higher";

/// What the stand-in needs from its surroundings.
#[derive(Debug, Clone)]
pub struct Env {
    /// The node's root (`KUBESIM_ROOT`).
    pub root: PathBuf,
    /// The shared cluster base directory (`KUBESIM_CLUSTER`).
    pub cluster: PathBuf,
    /// The version this kubeadm is (`KUBESIM_VERSION`, default `v1.33.1`).
    pub version: String,
    /// Now, in Unix seconds.
    pub now: u64,
    /// The `systemctl` that starts the kubelet; `None`: the kubelet is not started and nothing
    /// is waited for.
    pub systemctl: Option<PathBuf>,
    /// The node's address when no flag names it (`KUBESIM_ADVERTISE_ADDRESS`).
    pub advertise_address: Option<IpAddr>,
    /// How long to wait for the control plane or the kubelet.
    pub wait: Duration,
}

impl Env {
    /// An environment without a service manager (tests of the files and the refusals).
    pub fn new(root: PathBuf, cluster: PathBuf, version: &str, now: u64) -> Env {
        Env {
            root,
            cluster,
            version: version.to_string(),
            now,
            systemctl: None,
            advertise_address: None,
            wait: DEFAULT_WAIT,
        }
    }
}

/// What a run printed and its exit code.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Exit code: 0 success, 1 failure (as kubeadm).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

struct Failure(String);

type Step = Result<String, Failure>;

fn fail<T>(message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(message.into()))
}

/// Runs one kubeadm command line (without the program name).
pub fn run(args: &[String], env: &Env, stdin: &mut dyn BufRead) -> Outcome {
    let result = match args.first().map(String::as_str) {
        Some("init") if args.get(1).map(String::as_str) == Some("phase") => {
            upload_certs(&args[2..], env)
        }
        Some("init") => init(&args[1..], env),
        Some("join") => join(&args[1..], env),
        Some("token") if args.get(1).map(String::as_str) == Some("create") => {
            token_create(&args[2..], env)
        }
        Some("reset") => reset(&args[1..], env, stdin),
        Some("upgrade") => upgrade(&args[1..], env),
        Some("certs") if args.get(1).map(String::as_str) == Some("renew") => {
            certs_renew(&args[2..], env)
        }
        Some("version") => version(&args[1..], env),
        Some(other) => fail(format!(
            "unknown command \"{other}\" for \"kubeadm\"\nRun 'kubeadm --help' for usage."
        )),
        None => fail(
            "kubeadm: easily bootstrap a secure Kubernetes cluster (stand-in); no command given",
        ),
    };
    match result {
        Ok(stdout) => Outcome {
            code: 0,
            stdout,
            stderr: String::new(),
        },
        Err(Failure(message)) => Outcome {
            code: 1,
            stdout: String::new(),
            stderr: format!("{message}\n{STACK_HINT}\n"),
        },
    }
}

fn path(env: &Env, absolute: &str) -> PathBuf {
    crate::env::node_path(&env.root, absolute)
}

fn write_mode(env: &Env, absolute: &str, content: &str, mode: u32) -> Result<(), Failure> {
    crate::cluster::write_atomic(&path(env, absolute), content.as_bytes(), mode)
        .map_err(|e| Failure(format!("failed to write {absolute}: {e}")))
}

fn write(env: &Env, absolute: &str, content: &str) -> Result<(), Failure> {
    write_mode(env, absolute, content, 0o644)
}

/// Keys and kubeconfigs: readable by root only.
fn write_secret(env: &Env, absolute: &str, content: &str) -> Result<(), Failure> {
    write_mode(env, absolute, content, 0o600)
}

fn parse(spec: &[(&str, bool)], args: &[String]) -> Result<Parsed, Failure> {
    FlagSpec::new(spec).parse(args).map_err(Failure)
}

fn api_error(e: impl std::error::Error) -> Failure {
    Failure(format!(
        "failed to reach the API server (cluster state): {}",
        crate::daemon::error_chain(&e)
    ))
}

fn lock(dir: &ClusterDir) -> Result<LockedCluster, Failure> {
    dir.lock_state().map_err(api_error)
}

fn save(cluster: &mut LockedCluster) -> Result<(), Failure> {
    cluster.save().map_err(|e| {
        Failure(format!(
            "failed to update the API server (cluster state): {}",
            crate::daemon::error_chain(&e)
        ))
    })
}

/// The cluster of this node (from its CA), as kubeadm finds it through admin.conf.
fn node_cluster(env: &Env) -> Result<ClusterDir, Failure> {
    ClusterDir::for_node(&env.cluster, &env.root).map_err(api_error)
}

fn check_token_format(token: &str) -> Result<(), Failure> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && token
                .chars()
                .all(|c| c == '.' || c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        // kubeadm prints the token here; a malformed token may still be a secret, so it is not
        // repeated.
        fail(
            "the bootstrap token was not of the form \"\\\\A([a-z0-9]{6})\\\\.([a-z0-9]{16})\\\\z\"",
        )
    }
}

fn check_certificate_key(key: &str) -> Result<(), Failure> {
    if key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        fail("error decoding certificate key: the certificate key must be 32 bytes, hex encoded")
    }
}

fn check_endpoint(flag: &str, endpoint: &str) -> Result<(), Failure> {
    match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => fail(format!(
            "invalid value {endpoint:?} for --{flag}: expected host:port"
        )),
    }
}

fn new_token() -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    format!(
        "{}.{}",
        crate::ids::random_chars(6, alphabet),
        crate::ids::random_chars(16, alphabet)
    )
}

fn new_certificate_key() -> String {
    crate::ids::random_chars(64, b"0123456789abcdef")
}

fn expiry(env: &Env, ttl: u64) -> u64 {
    if ttl == 0 { 0 } else { env.now + ttl }
}

fn join_command(endpoint: &str, token: &str, hash: &str) -> String {
    format!("kubeadm join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {hash}")
}

/// The advertise address: the flag, else `KUBESIM_ADVERTISE_ADDRESS`, else (for the first
/// control plane) the endpoint's host when it is an address of this node, else the address
/// of the default route, as kubeadm picks it.
fn advertise_address(f: &Parsed, env: &Env, endpoint: Option<&str>) -> Result<IpAddr, Failure> {
    if let Some(text) = f.get("apiserver-advertise-address") {
        return text.parse().or_else(|_| {
            fail(format!(
                "invalid value {text:?} for --apiserver-advertise-address: not an IP address"
            ))
        });
    }
    if let Some(ip) = env.advertise_address {
        return Ok(ip);
    }
    let endpoint_ip = endpoint
        .and_then(|e| e.rsplit_once(':'))
        .and_then(|(h, _)| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        .filter(|ip| crate::env::is_local_address(*ip));
    Ok(endpoint_ip
        .or_else(crate::env::default_route_address)
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)))
}

fn bind_port(f: &Parsed) -> Result<u16, Failure> {
    let text = f.get("apiserver-bind-port").unwrap_or("6443");
    text.parse()
        .or_else(|_| fail(format!("invalid value {text:?} for --apiserver-bind-port")))
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn listening(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
}

/// The `kubelet-start` phase: `systemctl restart kubelet`. Returns whether the kubelet was
/// started; a failure is a warning in the output, as kubeadm prints it.
fn start_kubelet(env: &Env, out: &mut String) -> bool {
    let Some(systemctl) = &env.systemctl else {
        let _ = writeln!(
            out,
            "[kubelet-start] WARNING: no supported init system detected, won't make sure the kubelet is running properly."
        );
        return false;
    };
    let _ = writeln!(out, "[kubelet-start] Starting the kubelet");
    match std::process::Command::new(systemctl)
        .args(["restart", "kubelet"])
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            let _ = writeln!(
                out,
                "[kubelet-start] WARNING: unable to start the kubelet service: [{}]",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "[kubelet-start] WARNING: unable to start the kubelet service: [{e}]"
            );
            false
        }
    }
}

/// `systemctl stop kubelet`, when a service manager is there.
fn stop_kubelet(env: &Env) {
    if let Some(systemctl) = &env.systemctl {
        let _ = std::process::Command::new(systemctl)
            .args(["stop", "kubelet"])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// Waits for the API server at `address` (the `wait-control-plane` phase).
fn wait_control_plane(env: &Env, address: SocketAddr, out: &mut String) -> Result<(), Failure> {
    let _ = writeln!(
        out,
        "[wait-control-plane] Waiting for the kubelet to boot up the control plane as static Pods from directory \"/etc/kubernetes/manifests\""
    );
    if wait_until(env.wait, || listening(address)) {
        let _ = writeln!(out, "[control-plane-check] kube-apiserver is healthy");
        Ok(())
    } else {
        fail(format!(
            "[control-plane-check] kube-apiserver is not healthy after {:?}: the API server did not listen on {address}\n\nUnfortunately, an error has occurred, likely caused by:\n\t- The kubelet is not running\n\t- The kubelet is unhealthy due to a misconfiguration of the node in some way\nerror execution phase wait-control-plane: could not initialize a Kubernetes cluster",
            env.wait
        ))
    }
}

/// Waits for the kubelet to post the Node's status (the TLS bootstrap of a real join).
fn wait_kubelet(
    env: &Env,
    cluster: &ClusterDir,
    node_name: &str,
    out: &mut String,
) -> Result<(), Failure> {
    let _ = writeln!(
        out,
        "[kubelet-check] Waiting for a healthy kubelet at http://127.0.0.1:10248/healthz. This can take up to {:?}",
        env.wait
    );
    let store = cluster.store();
    let posted = wait_until(env.wait, || {
        store.read().ok().is_some_and(|o| {
            o.get("nodes", "", node_name)
                .and_then(|n| n.pointer("/status/nodeInfo/kubeletVersion"))
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        })
    });
    if posted {
        let _ = writeln!(out, "[kubelet-check] The kubelet is healthy");
        Ok(())
    } else {
        fail(
            "[kubelet-check] The kubelet is not healthy after the timeout\nerror execution phase kubelet-start: timed out waiting for the condition",
        )
    }
}

const INIT_FLAGS: &[(&str, bool)] = &[
    ("control-plane-endpoint", true),
    ("upload-certs", false),
    ("certificate-key", true),
    ("token", true),
    ("token-ttl", true),
    ("apiserver-cert-extra-sans", true),
    ("apiserver-advertise-address", true),
    ("apiserver-bind-port", true),
    ("pod-network-cidr", true),
    ("service-cidr", true),
    ("node-name", true),
    ("kubernetes-version", true),
    ("cri-socket", true),
    ("ignore-preflight-errors", true),
    ("skip-phases", true),
    ("config", true),
    ("v", true),
];

fn init(args: &[String], env: &Env) -> Step {
    let mut f = parse(INIT_FLAGS, args)?;
    crate::config::merge(&mut f, "init").map_err(Failure)?;
    if let Some(extra) = f.args.first() {
        return fail(format!("unknown command \"{extra}\" for \"kubeadm init\""));
    }
    let token = f.get("token").map_or_else(new_token, str::to_string);
    check_token_format(&token)?;
    let ttl = match f.get("token-ttl") {
        Some(t) => parse_duration_secs(t).ok_or_else(|| {
            Failure(format!(
                "invalid argument \"{t}\" for \"--token-ttl\" flag: time: invalid duration \"{t}\""
            ))
        })?,
        None => DEFAULT_TOKEN_TTL_SECS,
    };
    let certificate_key = match f.get("certificate-key") {
        Some(k) => {
            check_certificate_key(k)?;
            Some(k.to_string())
        }
        None => f.is_set("upload-certs").then(new_certificate_key),
    };
    if f.get("certificate-key").is_some() && !f.is_set("upload-certs") {
        return fail("can't use --certificate-key without --upload-certs");
    }
    let apiserver_manifest = "/etc/kubernetes/manifests/kube-apiserver.yaml";
    if path(env, apiserver_manifest).exists() {
        return fail(format!(
            "[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]: {apiserver_manifest} already exists\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`\nerror execution phase preflight: preflight checks failed"
        ));
    }
    let node_name = f
        .get("node-name")
        .map_or_else(|| "control-plane".to_string(), str::to_string);
    let version = f
        .get("kubernetes-version")
        .unwrap_or(&env.version)
        .to_string();
    let advertise = advertise_address(&f, env, f.get("control-plane-endpoint"))?;
    let port = bind_port(&f)?;
    let endpoint = f.get("control-plane-endpoint").map_or_else(
        || SocketAddr::new(advertise, port).to_string(),
        str::to_string,
    );
    check_endpoint("control-plane-endpoint", &endpoint)?;
    let sans: Vec<String> = f
        .all("apiserver-cert-extra-sans")
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let spec = ControlPlaneSpec {
        node_name: node_name.clone(),
        advertise_address: advertise,
        bind_port: port,
        endpoint: endpoint.clone(),
        extra_sans: sans.clone(),
        service_subnet: f
            .get("service-cidr")
            .unwrap_or(DEFAULT_SERVICE_SUBNET)
            .to_string(),
        pod_subnet: f.get("pod-network-cidr").unwrap_or_default().to_string(),
        version: version.clone(),
    };
    let kubernetes_ip = spec
        .kubernetes_service_ip()
        .ok_or_else(|| Failure(format!("invalid service CIDR {:?}", spec.service_subnet)))?;

    // The cluster CA: a real certificate, so the discovery hash is computed as kubeadm does.
    let ca = CertificateAuthority::generate(env.now)
        .map_err(|e| Failure(format!("[certs] failed to create the CA: {e}")))?;
    let ca_hash = ca.cert_hash();
    let dir = ClusterDir::for_hash(&env.cluster, &ca_hash);
    dir.save_ca(&ca).map_err(api_error)?;
    let sa_keys = crate::pki::generate_key_pem().map_err(|e| {
        Failure(format!(
            "[certs] failed to create the service account key: {e}"
        ))
    })?;
    crate::cluster::write_file(&dir.path().join("sa.key"), &sa_keys.0, 0o600).map_err(api_error)?;
    crate::cluster::write_file(&dir.path().join("sa.pub"), &sa_keys.1, 0o644).map_err(api_error)?;
    let mut cluster = lock(&dir)?;
    cluster.state = ClusterState {
        endpoint: endpoint.clone(),
        ca_cert_hash: ca_hash.clone(),
        ca_pem: ca.cert_pem().to_string(),
        tokens: vec![BootstrapToken {
            token: token.clone(),
            expires_unix: expiry(env, ttl),
        }],
        certificate_key: certificate_key.as_ref().map(|k| Expiring {
            value: k.clone(),
            expires_unix: env.now + CERTIFICATE_KEY_TTL_SECS,
        }),
        kubernetes_version: version.clone(),
        nodes: vec![Node {
            name: node_name.clone(),
            control_plane: true,
            kubelet_version: version.clone(),
        }],
        cert_sans: sans.clone(),
        pod_subnet: spec.pod_subnet.clone(),
        service_subnet: spec.service_subnet.clone(),
    };
    save(&mut cluster)?;
    drop(cluster);

    files::write_control_plane_certs(env, &ca, &spec, &sa_keys)?;
    files::write_control_plane_kubeconfigs(env, &ca, &spec)?;
    files::write_kubeconfig(
        env,
        &ca,
        "kubelet.conf",
        &endpoint,
        &format!("system:node:{node_name}"),
        &["system:nodes"],
    )?;
    files::write_static_pods(env, &spec)?;
    files::write_kubelet_files(env, &node_name)?;
    dir.store()
        .update(|objects| {
            addons::seed(
                objects,
                env.now,
                addons::ClusterFacts {
                    version: &version,
                    endpoint: &endpoint,
                    ca_pem: ca.cert_pem(),
                    kubernetes_service_ip: &kubernetes_ip.to_string(),
                    pod_subnet: &spec.pod_subnet,
                    service_subnet: &spec.service_subnet,
                },
            );
            addons::mark_node(objects, env.now, &node_name, true);
        })
        .map_err(api_error)?;

    let mut out = String::new();
    let _ = writeln!(out, "[init] Using Kubernetes version: {version}");
    let (dns, ips) = spec.apiserver_sans();
    let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "[certs] apiserver serving cert is signed for DNS names [{}] and IPs [{}]",
        dns.join(" "),
        ips.join(" ")
    );
    let _ = writeln!(out, "[kubeconfig] Writing \"admin.conf\" kubeconfig file");
    let _ = writeln!(
        out,
        "[control-plane] Creating static Pod manifests in \"/etc/kubernetes/manifests\""
    );
    let _ = writeln!(
        out,
        "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\""
    );
    if start_kubelet(env, &mut out) {
        wait_control_plane(env, SocketAddr::new(advertise, port), &mut out)?;
    }
    if let Some(key) = &certificate_key {
        let _ = writeln!(out, "[upload-certs] Using certificate key:\n{key}");
    }
    let _ = writeln!(
        out,
        "[mark-control-plane] Marking the node {node_name} as control-plane by adding the labels: [node-role.kubernetes.io/control-plane node.kubernetes.io/exclude-from-external-load-balancers]"
    );
    let _ = writeln!(out, "[bootstrap-token] Using token: {token}");
    let _ = writeln!(
        out,
        "[addons] Applied essential addon: CoreDNS\n[addons] Applied essential addon: kube-proxy"
    );
    let _ = writeln!(
        out,
        "\nYour Kubernetes control-plane has initialized successfully!\n"
    );
    if let Some(key) = &certificate_key {
        let _ = writeln!(
            out,
            "You can now join any number of control-plane nodes running the following command on each as root:\n\n  {} \\\n\t--control-plane --certificate-key {key}\n",
            join_command(&endpoint, &token, &ca_hash)
        );
    }
    let _ = writeln!(
        out,
        "Then you can join any number of worker nodes by running the following on each as root:\n\n{}",
        join_command(&endpoint, &token, &ca_hash)
    );
    Ok(out)
}

const JOIN_FLAGS: &[(&str, bool)] = &[
    ("token", true),
    ("discovery-token", true),
    ("tls-bootstrap-token", true),
    ("discovery-token-ca-cert-hash", true),
    ("discovery-token-unsafe-skip-ca-verification", false),
    ("control-plane", false),
    ("certificate-key", true),
    ("node-name", true),
    ("apiserver-advertise-address", true),
    ("apiserver-bind-port", true),
    ("cri-socket", true),
    ("ignore-preflight-errors", true),
    ("config", true),
    ("v", true),
];

/// The cluster a join reaches: the one at `endpoint` whose token is valid and whose CA is
/// pinned (several clusters may share a base directory, even an endpoint).
fn find_join_cluster(
    env: &Env,
    endpoint: &str,
    token: &str,
    hashes: &[String],
) -> Result<(ClusterDir, ClusterState), Failure> {
    let all: Vec<(ClusterDir, ClusterState)> = ClusterDir::all(&env.cluster)
        .into_iter()
        .filter_map(|d| d.read_state().ok().map(|s| (d, s)))
        .collect();
    let mut candidates: Vec<(ClusterDir, ClusterState)> = all
        .iter()
        .filter(|(_, s)| s.endpoint == endpoint)
        .cloned()
        .collect();
    // Not the control-plane endpoint: a control-plane node's own API server (CKS joins through
    // the first control node's address). Real kubeadm fetches cluster-info from whatever
    // answers there and recognises the cluster by the token's signature; the stand-in needs a
    // listener there, then lets the token and the CA hash pick the cluster.
    if candidates.is_empty()
        && endpoint
            .parse::<SocketAddr>()
            .is_ok_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok())
    {
        candidates = all;
    }
    if candidates.is_empty() {
        return fail(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: Get \"https://{endpoint}/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s\": dial tcp {endpoint}: connect: connection refused"
        ));
    }
    let token_id = token.split('.').next().unwrap_or_default();
    let with_token: Vec<(ClusterDir, ClusterState)> = candidates
        .into_iter()
        .filter(|(_, s)| s.token_valid(token, env.now))
        .collect();
    if with_token.is_empty() {
        return fail(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"{token_id}\""
        ));
    }
    let seen = with_token
        .first()
        .map(|(_, s)| s.ca_cert_hash.clone())
        .unwrap_or_default();
    with_token
        .into_iter()
        .find(|(_, s)| hashes.is_empty() || hashes.contains(&s.ca_cert_hash))
        .ok_or_else(|| {
            Failure(format!(
                "error execution phase preflight: couldn't validate the identity of the API Server: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{seen}\" are pinned"
            ))
        })
}

fn join(args: &[String], env: &Env) -> Step {
    let mut f = parse(JOIN_FLAGS, args)?;
    crate::config::merge(&mut f, "join").map_err(Failure)?;
    let Some(endpoint) = f.args.first().cloned() else {
        return fail("discovery: Invalid value: \"\": bootstrapToken or file must be set");
    };
    check_endpoint("api-server-endpoint", &endpoint)?;
    let Some(token) = f
        .get("token")
        .or(f.get("discovery-token"))
        .map(str::to_string)
    else {
        return fail(
            "discovery: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue",
        );
    };
    check_token_format(&token)?;
    let hashes = f.all("discovery-token-ca-cert-hash").to_vec();
    if hashes.is_empty() && !f.is_set("discovery-token-unsafe-skip-ca-verification") {
        return fail(
            "discovery.bootstrapToken: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue",
        );
    }
    let control_plane = f.is_set("control-plane");
    if let Some(key) = f.get("certificate-key") {
        check_certificate_key(key)?;
    }
    if path(env, "/etc/kubernetes/kubelet.conf").exists() {
        return fail(
            "[preflight] Some fatal errors occurred:\n\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists\nerror execution phase preflight: preflight checks failed",
        );
    }

    let (dir, state) = find_join_cluster(env, &endpoint, &token, &hashes)?;
    if control_plane {
        let Some(key) = f.get("certificate-key") else {
            return fail(
                "error execution phase control-plane-prepare/download-certs: error downloading certs: the certificate key is required to join a control-plane node (--certificate-key)",
            );
        };
        match &state.certificate_key {
            Some(k) if k.value == key && (k.expires_unix == 0 || k.expires_unix > env.now) => {}
            Some(k) if k.value == key => {
                return fail(
                    "error execution phase control-plane-prepare/download-certs: error downloading certs: error downloading the secret: secrets \"kubeadm-certs\" not found",
                );
            }
            _ => {
                return fail(
                    "error execution phase control-plane-prepare/download-certs: error downloading certs: error decoding certs: cipher: message authentication failed",
                );
            }
        }
    }
    let node_name = f
        .get("node-name")
        .map_or_else(|| format!("node-{}", state.nodes.len()), str::to_string);
    let ready_node = dir.store().read().ok().is_some_and(|o| {
        o.get("nodes", "", &node_name)
            .is_some_and(|n| crate::controllers::node_ready(n) == "True")
    });
    if state.nodes.iter().any(|n| n.name == node_name) || ready_node {
        return fail(format!(
            "error execution phase kubelet-start: a Node with name \"{node_name}\" and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node"
        ));
    }
    let ca = dir.ca().map_err(api_error)?;
    let version = state.kubernetes_version.clone();
    let advertise = advertise_address(&f, env, None)?;
    let port = bind_port(&f)?;
    let spec = ControlPlaneSpec {
        node_name: node_name.clone(),
        advertise_address: advertise,
        bind_port: port,
        endpoint: endpoint.clone(),
        extra_sans: state.cert_sans.clone(),
        service_subnet: if state.service_subnet.is_empty() {
            DEFAULT_SERVICE_SUBNET.to_string()
        } else {
            state.service_subnet.clone()
        },
        pod_subnet: state.pod_subnet.clone(),
        version: version.clone(),
    };
    {
        let mut cluster = lock(&dir)?;
        cluster.state.nodes.push(Node {
            name: node_name.clone(),
            control_plane,
            kubelet_version: version.clone(),
        });
        save(&mut cluster)?;
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "[preflight] Running pre-flight checks\n[preflight] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"..."
    );
    write(env, "/etc/kubernetes/pki/ca.crt", ca.cert_pem())?;
    if control_plane {
        let _ = writeln!(
            out,
            "[download-certs] Downloading the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace"
        );
        let read = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .map_err(|e| Failure(format!("error downloading certs: {name}: {e}")))
        };
        let sa_keys = (read("sa.key")?, read("sa.pub")?);
        files::write_control_plane_certs(env, &ca, &spec, &sa_keys)?;
        files::write_control_plane_kubeconfigs(env, &ca, &spec)?;
        files::write_static_pods(env, &spec)?;
    }
    // The TLS bootstrap: the kubelet's client certificate, signed by the cluster CA.
    files::write_kubeconfig(
        env,
        &ca,
        "kubelet.conf",
        &endpoint,
        &format!("system:node:{node_name}"),
        &["system:nodes"],
    )?;
    files::write_kubelet_files(env, &node_name)?;
    dir.store()
        .update(|objects| addons::mark_node(objects, env.now, &node_name, control_plane))
        .map_err(api_error)?;
    let _ = writeln!(
        out,
        "[kubelet-start] Writing kubelet configuration to file \"/var/lib/kubelet/config.yaml\""
    );
    if start_kubelet(env, &mut out) {
        if control_plane {
            wait_control_plane(env, SocketAddr::new(advertise, port), &mut out)?;
        }
        wait_kubelet(env, &dir, &node_name, &mut out)?;
    }
    out.push_str(if control_plane {
        "\nThis node has joined the cluster and a new control plane instance was created\n"
    } else {
        "\nThis node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.\n"
    });
    Ok(out)
}

fn require_admin(env: &Env) -> Result<(), Failure> {
    if path(env, "/etc/kubernetes/admin.conf").exists() {
        Ok(())
    } else {
        fail(
            "failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory",
        )
    }
}

fn token_create(args: &[String], env: &Env) -> Step {
    let f = parse(
        &[
            ("ttl", true),
            ("print-join-command", false),
            ("certificate-key", true),
            ("v", true),
        ],
        args,
    )?;
    require_admin(env)?;
    let token = f.args.first().cloned().unwrap_or_else(new_token);
    check_token_format(&token)?;
    let ttl = match f.get("ttl") {
        Some(t) => parse_duration_secs(t).ok_or_else(|| {
            Failure(format!(
                "invalid argument \"{t}\" for \"--ttl\" flag: time: invalid duration \"{t}\""
            ))
        })?,
        None => DEFAULT_TOKEN_TTL_SECS,
    };
    let dir = node_cluster(env)?;
    let mut cluster = lock(&dir)?;
    cluster.state.tokens.push(BootstrapToken {
        token: token.clone(),
        expires_unix: expiry(env, ttl),
    });
    save(&mut cluster)?;
    if f.is_set("print-join-command") {
        let mut cmd = join_command(&cluster.state.endpoint, &token, &cluster.state.ca_cert_hash)
            .replace(" \\\n\t", " ");
        if let Some(key) = f.get("certificate-key") {
            cmd.push_str(&format!(" --control-plane --certificate-key {key}"));
        }
        Ok(format!("{cmd}\n"))
    } else {
        Ok(format!("{token}\n"))
    }
}

fn upload_certs(args: &[String], env: &Env) -> Step {
    if args.first().map(String::as_str) != Some("upload-certs") {
        return fail(format!(
            "unknown command {:?} for \"kubeadm init phase\"",
            args.first().cloned().unwrap_or_default()
        ));
    }
    let f = parse(
        &[
            ("upload-certs", false),
            ("certificate-key", true),
            ("v", true),
        ],
        &args[1..],
    )?;
    require_admin(env)?;
    if !f.is_set("upload-certs") {
        return Ok("[upload-certs] Skipping phase. Please see --upload-certs\n".into());
    }
    let key = match f.get("certificate-key") {
        Some(k) => {
            check_certificate_key(k)?;
            k.to_string()
        }
        None => new_certificate_key(),
    };
    let dir = node_cluster(env)?;
    let mut cluster = lock(&dir)?;
    cluster.state.certificate_key = Some(Expiring {
        value: key.clone(),
        expires_unix: env.now + CERTIFICATE_KEY_TTL_SECS,
    });
    save(&mut cluster)?;
    Ok(format!(
        "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace\n[upload-certs] Using certificate key:\n{key}\n"
    ))
}

fn reset(args: &[String], env: &Env, stdin: &mut dyn BufRead) -> Step {
    let f = parse(
        &[
            ("force", false),
            ("f", false),
            ("cri-socket", true),
            ("v", true),
        ],
        args,
    )?;
    if !(f.is_set("force") || f.is_set("f")) {
        let mut answer = String::new();
        let _ = stdin.read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return fail("Aborted reset operation");
        }
    }
    let node_name = std::fs::read_to_string(path(env, "/var/lib/kubelet/kubesim-node")).ok();
    let dir = node_cluster(env).ok();
    let mut out = String::from("[reset] Stopping the kubelet service\n");
    stop_kubelet(env);
    out.push_str("[reset] Removing the static pods' containers\n");
    crate::kubelet::stop_static_pods(&env.root);
    for p in [
        "/etc/kubernetes/manifests",
        "/etc/kubernetes/pki",
        "/var/lib/kubelet",
        "/var/lib/etcd",
    ] {
        let _ = std::fs::remove_dir_all(path(env, p));
    }
    for file in [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "bootstrap-kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ] {
        let _ = std::fs::remove_file(path(env, &format!("/etc/kubernetes/{file}")));
    }
    if let (Some(name), Some(dir)) = (node_name, dir) {
        let mut cluster = lock(&dir)?;
        cluster.state.nodes.retain(|n| n.name != name);
        save(&mut cluster)?;
    }
    out.push_str("[reset] Deleted contents of the etcd data directory: /var/lib/etcd\n[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet /etc/kubernetes/pki]\n");
    Ok(out)
}

/// (major, minor, patch) of `v1.33.1`.
fn semver(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.trim_start_matches('v').split('.');
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.split(['-', '+']).next()?.parse().ok()?,
    ))
}

/// The spec of this node's control plane, read back from its API server manifest.
fn local_control_plane(env: &Env, state: &ClusterState, version: &str) -> Option<ControlPlaneSpec> {
    let text =
        std::fs::read_to_string(path(env, "/etc/kubernetes/manifests/kube-apiserver.yaml")).ok()?;
    let flag = |name: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(&format!("- --{name}="))
                .map(str::to_string)
        })
    };
    Some(ControlPlaneSpec {
        node_name: std::fs::read_to_string(path(env, "/var/lib/kubelet/kubesim-node"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default(),
        advertise_address: flag("advertise-address")?.parse().ok()?,
        bind_port: flag("secure-port")?.parse().ok()?,
        endpoint: state.endpoint.clone(),
        extra_sans: state.cert_sans.clone(),
        service_subnet: flag("service-cluster-ip-range")
            .unwrap_or_else(|| DEFAULT_SERVICE_SUBNET.into()),
        pod_subnet: state.pod_subnet.clone(),
        version: version.to_string(),
    })
}

/// The static pods kubeadm upgrades, in its order.
const UPGRADED_COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Rewrites this control plane's static pods for `version` and, when its kubelet runs, waits
/// (as kubeadm does, component by component) for the kubelet to run each changed one from its
/// new manifest: its mirror pod carries the new manifest's hash and is Running, and the API
/// server listens again.
fn upgrade_static_pods(
    env: &Env,
    dir: &ClusterDir,
    spec: &ControlPlaneSpec,
    out: &mut String,
) -> Result<(), Failure> {
    let manifest = |component: &str| {
        std::fs::read_to_string(path(
            env,
            &format!("/etc/kubernetes/manifests/{component}.yaml"),
        ))
        .unwrap_or_default()
    };
    let before: Vec<String> = UPGRADED_COMPONENTS.iter().map(|c| manifest(c)).collect();
    files::write_static_pods(env, spec)?;
    let _ = writeln!(
        out,
        "[upgrade/staticpods] Writing new Static Pod manifests to \"/etc/kubernetes/manifests\""
    );
    let kubelet_running = env.systemctl.as_ref().is_some_and(|s| {
        std::process::Command::new(s)
            .args(["is-active", "--quiet", "kubelet"])
            .status()
            .is_ok_and(|st| st.success())
    });
    let store = dir.store();
    for (component, before) in UPGRADED_COMPONENTS.iter().zip(before) {
        let after = manifest(component);
        if before == after {
            let _ = writeln!(
                out,
                "[upgrade/staticpods] Current and new manifests of {component} are equal, skipping upgrade"
            );
            continue;
        }
        if !kubelet_running {
            continue;
        }
        let hash = crate::ids::stable_hash(&after, 16);
        let mirror = format!("{component}-{}", spec.node_name);
        let _ = writeln!(
            out,
            "[upgrade/staticpods] Preparing for \"{component}\" upgrade\n[upgrade/staticpods] Waiting for the kubelet to restart the component"
        );
        let restarted = wait_until(env.wait, || {
            store.read().ok().is_some_and(|o| {
                o.get("pods", "kube-system", &mirror).is_some_and(|p| {
                    p.pointer("/metadata/annotations/kubernetes.io~1config.hash")
                        .and_then(Value::as_str)
                        == Some(hash.as_str())
                        && p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                })
            })
        }) && (*component != "kube-apiserver"
            || wait_until(env.wait, || {
                listening(SocketAddr::new(spec.advertise_address, spec.bind_port))
            }));
        if !restarted {
            return fail(format!(
                "[upgrade/staticpods] FATAL: the kubelet did not restart the {component} from its new manifest: timed out waiting for the condition"
            ));
        }
        let _ = writeln!(
            out,
            "[apiclient] Found 1 Pods for label selector component={component}\n[upgrade/staticpods] Component \"{component}\" upgraded successfully!"
        );
    }
    Ok(())
}

fn upgrade(args: &[String], env: &Env) -> Step {
    match args.first().map(String::as_str) {
        Some("apply") => {
            let f = parse(
                &[
                    ("yes", false),
                    ("y", false),
                    ("force", false),
                    ("f", false),
                    ("ignore-preflight-errors", true),
                    ("v", true),
                ],
                &args[1..],
            )?;
            let Some(target) = f.args.first().cloned() else {
                return fail(
                    "missing one or more required arguments. Required arguments: [version]",
                );
            };
            require_admin(env)?;
            if !(f.is_set("yes") || f.is_set("y")) {
                return fail("[upgrade] Are you sure you want to proceed? [y/N]: Aborted (no -y)");
            }
            let target = format!("v{}", target.trim_start_matches('v'));
            let (Some(wanted), Some(own)) = (semver(&target), semver(&env.version)) else {
                return fail(format!(
                    "[upgrade/version] FATAL: invalid version {target:?}"
                ));
            };
            if wanted > own {
                return fail(format!(
                    "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{target}\" is higher than the kubeadm version \"{}\". Upgrade kubeadm first using the tool you used to install kubeadm\n\nCan be bypassed if you pass the --force flag",
                    env.version
                ));
            }
            let dir = node_cluster(env)?;
            let state = dir.read_state().map_err(api_error)?;
            let current = semver(&state.kubernetes_version).unwrap_or(wanted);
            if wanted.1 > current.1 + 1 {
                return fail(format!(
                    "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{target}\" is too high; kubeadm can upgrade only 1 minor version at a time"
                ));
            }
            if wanted < current && !(f.is_set("force") || f.is_set("f")) {
                return fail(format!(
                    "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{target}\" is lower than the cluster version \"{}\". Downgrades are not supported yet\n\nCan be bypassed if you pass the --force flag",
                    state.kubernetes_version
                ));
            }
            let mut out = format!(
                "[upgrade/version] You have chosen to change the cluster version to \"{target}\"\n"
            );
            let spec = local_control_plane(env, &state, &target).ok_or_else(|| {
                Failure("[upgrade/staticpods] FATAL: this node has no kube-apiserver manifest; run kubeadm upgrade apply on a control-plane node".into())
            })?;
            {
                let mut cluster = lock(&dir)?;
                cluster.state.kubernetes_version = target.clone();
                for n in &mut cluster.state.nodes {
                    if n.name == spec.node_name {
                        n.kubelet_version = target.clone();
                    }
                }
                save(&mut cluster)?;
            }
            upgrade_static_pods(env, &dir, &spec, &mut out)?;
            let endpoint = state.endpoint.clone();
            dir.store()
                .update(|objects| {
                    addons::update_cluster_configuration(
                        objects,
                        env.now,
                        &target,
                        &endpoint,
                        &state.pod_subnet,
                        &spec.service_subnet,
                    );
                    addons::upgrade_addons(objects, env.now, &target);
                })
                .map_err(api_error)?;
            let _ = writeln!(
                out,
                "[addons] Applied essential addon: CoreDNS\n[addons] Applied essential addon: kube-proxy"
            );
            let _ = writeln!(
                out,
                "\n[upgrade/successful] SUCCESS! Your cluster was upgraded to \"{target}\". Enjoy!\n\n[upgrade/kubelet] Now that your control plane is upgraded, please proceed with upgrading your kubelets if you haven't already done so."
            );
            Ok(out)
        }
        Some("node") => {
            parse(
                &[("v", true), ("ignore-preflight-errors", true)],
                &args[1..],
            )?;
            let dir = node_cluster(env)?;
            let state = dir.read_state().map_err(api_error)?;
            if state.kubernetes_version != env.version {
                return fail(format!(
                    "the control plane is at {} but this kubeadm is {}: upgrade the first control-plane node first",
                    state.kubernetes_version, env.version
                ));
            }
            let mut out = String::from(
                "[upgrade] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"...\n",
            );
            if let Some(spec) = local_control_plane(env, &state, &state.kubernetes_version) {
                upgrade_static_pods(env, &dir, &spec, &mut out)?;
            } else {
                let _ = writeln!(out, "[upgrade] Skipping phase. Not a control plane node.");
            }
            let _ = writeln!(
                out,
                "[upgrade] The configuration for this node was successfully updated!\n[upgrade] Now you should go ahead and upgrade the kubelet package using your package manager."
            );
            Ok(out)
        }
        other => fail(format!(
            "unknown command {:?} for \"kubeadm upgrade\"",
            other.unwrap_or_default()
        )),
    }
}

fn certs_renew(args: &[String], env: &Env) -> Step {
    match args.first().map(String::as_str) {
        Some("all") => {
            require_admin(env)?;
            let dir = node_cluster(env)?;
            let state = dir.read_state().map_err(api_error)?;
            let ca = dir.ca().map_err(api_error)?;
            let spec =
                local_control_plane(env, &state, &state.kubernetes_version).ok_or_else(|| {
                    Failure(
                        "failed to renew certificates: this node has no kube-apiserver manifest"
                            .into(),
                    )
                })?;
            let read = |name: &str| {
                std::fs::read_to_string(path(env, &format!("/etc/kubernetes/pki/{name}")))
                    .map_err(|e| Failure(format!("failed to read {name}: {e}")))
            };
            let sa_keys = (read("sa.key")?, read("sa.pub")?);
            files::write_control_plane_certs(env, &ca, &spec, &sa_keys)?;
            files::write_control_plane_kubeconfigs(env, &ca, &spec)?;
            Ok("[renew] Reading configuration from the cluster...\ncertificate embedded in the kubeconfig file for the admin to use and for kubeadm itself renewed\ncertificate for serving the Kubernetes API renewed\n\nDone renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates.\n".into())
        }
        other => fail(format!(
            "unknown command {:?} for \"kubeadm certs renew\"",
            other.unwrap_or_default()
        )),
    }
}

fn version(args: &[String], env: &Env) -> Step {
    let f = parse(&[("output", true), ("o", true)], args)?;
    let (major, minor, _) = semver(&env.version).unwrap_or((1, 0, 0));
    match f.get("output").or(f.get("o")) {
        Some("short") => Ok(format!("{}\n", env.version)),
        None => Ok(format!(
            "kubeadm version: &version.Info{{Major:\"{major}\", Minor:\"{minor}\", GitVersion:\"{}\", GitCommit:\"0000000000000000000000000000000000000000\", GitTreeState:\"clean\", BuildDate:\"2025-01-01T00:00:00Z\", GoVersion:\"go1.24.0\", Compiler:\"gc\", Platform:\"linux/{}\"}}\n",
            env.version,
            crate::env::go_arch()
        )),
        Some("json") => Ok(format!(
            "{{\n  \"clientVersion\": {{\n    \"major\": \"{major}\",\n    \"minor\": \"{minor}\",\n    \"gitVersion\": \"{}\",\n    \"platform\": \"linux/{}\"\n  }}\n}}\n",
            env.version,
            crate::env::go_arch()
        )),
        Some(o) => fail(format!("error: invalid output format: {o}")),
    }
}

/// Where a node's files are, for tests.
pub fn node_path(root: &Path, absolute: &str) -> PathBuf {
    crate::env::node_path(root, absolute)
}
