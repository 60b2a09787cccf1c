//! The `kubeadm` stand-in: `init`, `join`, `token create`, `init phase upload-certs`, `reset`,
//! `upgrade apply|node`, `certs renew`, `version`.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::PublicKeyData;
use sha2::{Digest, Sha256};

use crate::cluster::{BootstrapToken, ClusterState, Expiring, LockedCluster, Node};
use crate::flags::{FlagSpec, Parsed, parse_duration_secs};

/// Default bootstrap token lifetime (kubeadm's `--token-ttl` default, 24h).
const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// How long uploaded certificates stay (kubeadm deletes the Secret after two hours).
const CERTIFICATE_KEY_TTL_SECS: u64 = 2 * 3600;
/// kubeadm's hint after every error.
const STACK_HINT: &str = "To see the stack trace of this error execute with --v=5 or higher";

/// What the stand-in needs from its surroundings.
#[derive(Debug, Clone)]
pub struct Env {
    /// The node's root (`KUBESIM_ROOT`).
    pub root: PathBuf,
    /// The shared cluster directory (`KUBESIM_CLUSTER`).
    pub cluster: PathBuf,
    /// The version this kubeadm is (`KUBESIM_VERSION`, default `v1.33.1`).
    pub version: String,
    /// Now, in Unix seconds.
    pub now: u64,
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
            certs_renew(&args[2..])
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
    env.root.join(absolute.trim_start_matches('/'))
}

fn write(env: &Env, absolute: &str, content: &str) -> Result<(), Failure> {
    let p = path(env, absolute);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure(format!("failed to create {}: {e}", dir.display())))?;
    }
    std::fs::write(&p, content).map_err(|e| Failure(format!("failed to write {absolute}: {e}")))
}

fn parse(spec: &[(&str, bool)], args: &[String]) -> Result<Parsed, Failure> {
    FlagSpec::new(spec).parse(args).map_err(Failure)
}

fn open_cluster(env: &Env) -> Result<LockedCluster, Failure> {
    LockedCluster::open(&env.cluster).map_err(|e| {
        Failure(format!(
            "failed to reach the API server (cluster state): {e}"
        ))
    })
}

fn save(cluster: &mut LockedCluster) -> Result<(), Failure> {
    cluster.save().map_err(|e| {
        Failure(format!(
            "failed to update the API server (cluster state): {e}"
        ))
    })
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
        fail(format!(
            "the bootstrap token \"{token}\" was not of the form \"\\\\A([a-z0-9]{{6}})\\\\.([a-z0-9]{{16}})\\\\z\""
        ))
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

/// A pseudo-random lower-case alphanumeric string, seeded from time, pid and a counter.
fn random_chars(n: usize, alphabet: &[u8]) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}{}",
        std::time::SystemTime::now(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let digest = Sha256::digest(seed.as_bytes());
    digest
        .iter()
        .cycle()
        .take(n)
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

fn new_token() -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    format!(
        "{}.{}",
        random_chars(6, alphabet),
        random_chars(16, alphabet)
    )
}

fn new_certificate_key() -> String {
    random_chars(64, b"0123456789abcdef")
}

fn expiry(env: &Env, ttl: u64) -> u64 {
    if ttl == 0 { 0 } else { env.now + ttl }
}

fn kubeconfig(endpoint: &str, ca_pem: &str, user: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{endpoint}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64.encode(ca_pem),
        b64.encode(format!("stand-in client certificate for {user}")),
        b64.encode(format!("stand-in client key for {user}")),
    )
}

fn join_command(endpoint: &str, token: &str, hash: &str) -> String {
    format!("kubeadm join {endpoint} --token {token} \\\n\t--discovery-token-ca-cert-hash {hash}")
}

const INIT_FLAGS: &[(&str, bool)] = &[
    ("control-plane-endpoint", true),
    ("upload-certs", false),
    ("certificate-key", true),
    ("token", true),
    ("token-ttl", true),
    ("apiserver-cert-extra-sans", true),
    ("apiserver-advertise-address", true),
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
    let endpoint = f
        .get("control-plane-endpoint")
        .unwrap_or("127.0.0.1:6443")
        .to_string();
    check_endpoint("control-plane-endpoint", &endpoint)?;
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
    let sans: Vec<String> = f
        .all("apiserver-cert-extra-sans")
        .iter()
        .flat_map(|s| s.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();

    // The cluster CA: a real certificate, so the discovery hash is computed as kubeadm does.
    let mut params = rcgen::CertificateParams::new(sans.clone())
        .map_err(|e| Failure(format!("invalid SAN: {e}")))?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes");
    let key = rcgen::KeyPair::generate()
        .map_err(|e| Failure(format!("failed to create the CA key: {e}")))?;
    let ca = params
        .self_signed(&key)
        .map_err(|e| Failure(format!("failed to create the CA: {e}")))?;
    let ca_pem = ca.pem();
    let ca_hash = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(key.subject_public_key_info()))
    );

    let mut cluster = open_cluster(env)?;
    if !cluster.state.endpoint.is_empty() {
        return fail(format!(
            "error execution phase preflight: a cluster already answers at {}",
            cluster.state.endpoint
        ));
    }
    cluster.state = ClusterState {
        endpoint: endpoint.clone(),
        ca_cert_hash: ca_hash.clone(),
        ca_pem: ca_pem.clone(),
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
    };
    save(&mut cluster)?;

    write(env, "/etc/kubernetes/pki/ca.crt", &ca_pem)?;
    write(env, "/etc/kubernetes/pki/ca.key", &key.serialize_pem())?;
    for (file, user) in [
        ("admin.conf", "kubernetes-admin"),
        ("super-admin.conf", "kubernetes-super-admin"),
        ("controller-manager.conf", "system:kube-controller-manager"),
        ("scheduler.conf", "system:kube-scheduler"),
        ("kubelet.conf", &format!("system:node:{node_name}")),
    ] {
        write(
            env,
            &format!("/etc/kubernetes/{file}"),
            &kubeconfig(&endpoint, &ca_pem, user),
        )?;
    }
    write_static_pods(env, &version, &sans)?;
    write_kubelet_files(env, &node_name, f.get("pod-network-cidr"))?;

    let mut out = String::new();
    let _ = writeln!(out, "[init] Using Kubernetes version: {version}");
    let _ = writeln!(
        out,
        "[certs] apiserver serving cert is signed for DNS names [kubernetes {}]",
        sans.join(" ")
    );
    let _ = writeln!(out, "[kubeconfig] Writing \"admin.conf\" kubeconfig file");
    if let Some(key) = &certificate_key {
        let _ = writeln!(out, "[upload-certs] Using certificate key:\n{key}");
    }
    let _ = writeln!(out, "[bootstrap-token] Using token: {token}");
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

fn write_static_pods(env: &Env, version: &str, sans: &[String]) -> Result<(), Failure> {
    for component in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        let image = if component == "etcd" {
            "registry.k8s.io/etcd".to_string()
        } else {
            format!("registry.k8s.io/{component}:{version}")
        };
        write(
            env,
            &format!("/etc/kubernetes/manifests/{component}.yaml"),
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {component}\n  namespace: kube-system\n  annotations:\n    kubesim/extra-sans: \"{}\"\nspec:\n  containers:\n  - name: {component}\n    image: {image}\n",
                sans.join(",")
            ),
        )?;
    }
    Ok(())
}

fn write_kubelet_files(env: &Env, node_name: &str, pod_cidr: Option<&str>) -> Result<(), Failure> {
    write(
        env,
        "/var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\n",
    )?;
    write(
        env,
        "/var/lib/kubelet/kubeadm-flags.env",
        &format!(
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --hostname-override={node_name}{}\"\n",
            pod_cidr
                .map(|c| format!(" --pod-cidr={c}"))
                .unwrap_or_default()
        ),
    )?;
    write(env, "/var/lib/kubelet/kubesim-node", node_name)
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
    ("cri-socket", true),
    ("ignore-preflight-errors", true),
    ("config", true),
    ("v", true),
];

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
    let hashes = f.all("discovery-token-ca-cert-hash");
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

    let mut cluster = open_cluster(env)?;
    let state = &cluster.state;
    if state.endpoint.is_empty() || state.endpoint != endpoint {
        return fail(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: Get \"https://{endpoint}/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s\": dial tcp {endpoint}: connect: connection refused"
        ));
    }
    let token_id = token.split('.').next().unwrap_or_default();
    if !state.token_valid(&token, env.now) {
        return fail(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: could not find a JWS signature in the cluster-info ConfigMap for token ID \"{token_id}\""
        ));
    }
    if !hashes.is_empty() && !hashes.contains(&state.ca_cert_hash) {
        return fail(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{}\" are pinned",
            state.ca_cert_hash
        ));
    }
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
    if state.nodes.iter().any(|n| n.name == node_name) {
        return fail(format!(
            "error execution phase kubelet-start: a Node with name \"{node_name}\" and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node"
        ));
    }
    let ca_pem = state.ca_pem.clone();
    let version = state.kubernetes_version.clone();
    cluster.state.nodes.push(Node {
        name: node_name.clone(),
        control_plane,
        kubelet_version: version.clone(),
    });
    save(&mut cluster)?;

    write(env, "/etc/kubernetes/pki/ca.crt", &ca_pem)?;
    write(
        env,
        "/etc/kubernetes/kubelet.conf",
        &kubeconfig(&endpoint, &ca_pem, &format!("system:node:{node_name}")),
    )?;
    if control_plane {
        write(
            env,
            "/etc/kubernetes/admin.conf",
            &kubeconfig(&endpoint, &ca_pem, "kubernetes-admin"),
        )?;
        write_static_pods(env, &version, &[])?;
    }
    write_kubelet_files(env, &node_name, None)?;
    Ok(if control_plane {
        "This node has joined the cluster and a new control plane instance was created\n"
            .to_string()
    } else {
        "This node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.\n".to_string()
    })
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
    let mut cluster = open_cluster(env)?;
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
    let mut cluster = open_cluster(env)?;
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
    if let Some(name) = node_name {
        let mut cluster = open_cluster(env)?;
        cluster.state.nodes.retain(|n| n.name != name);
        save(&mut cluster)?;
    }
    Ok("[reset] Deleted contents of the etcd data directory: /var/lib/etcd\n[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet /etc/kubernetes/pki]\n".into())
}

fn upgrade(args: &[String], env: &Env) -> Step {
    match args.first().map(String::as_str) {
        Some("apply") => {
            let f = parse(
                &[
                    ("yes", false),
                    ("y", false),
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
            if target != env.version {
                return fail(format!(
                    "[upgrade/version] FATAL: the --version argument is invalid due to these errors:\n\n\t- Specified version to upgrade to \"{target}\" is higher than the kubeadm version \"{}\". Upgrade kubeadm first",
                    env.version
                ));
            }
            let mut cluster = open_cluster(env)?;
            cluster.state.kubernetes_version = target.clone();
            save(&mut cluster)?;
            write_static_pods(env, &target, &[])?;
            Ok(format!(
                "[upgrade/successful] SUCCESS! Your cluster was upgraded to \"{target}\". Enjoy!\n"
            ))
        }
        Some("node") => {
            parse(
                &[("v", true), ("ignore-preflight-errors", true)],
                &args[1..],
            )?;
            let cluster = open_cluster(env)?;
            if cluster.state.kubernetes_version != env.version {
                return fail(format!(
                    "the control plane is at {} but this kubeadm is {}: upgrade the first control-plane node first",
                    cluster.state.kubernetes_version, env.version
                ));
            }
            Ok("[upgrade] The configuration for this node was successfully updated!\n".into())
        }
        other => fail(format!(
            "unknown command {:?} for \"kubeadm upgrade\"",
            other.unwrap_or_default()
        )),
    }
}

fn certs_renew(args: &[String]) -> Step {
    match args.first().map(String::as_str) {
        Some("all") => Ok("Done renewing certificates. You must restart the kube-apiserver, kube-controller-manager, kube-scheduler and etcd, so that they can use the new certificates.\n".into()),
        other => fail(format!("unknown command {:?} for \"kubeadm certs renew\"", other.unwrap_or_default())),
    }
}

fn version(args: &[String], env: &Env) -> Step {
    let f = parse(&[("output", true), ("o", true)], args)?;
    match f.get("output").or(f.get("o")) {
        Some("short") => Ok(format!("{}\n", env.version)),
        None => Ok(format!(
            "kubeadm version: &version.Info{{Major:\"1\", GitVersion:\"{}\", Compiler:\"gc\", Platform:\"linux/amd64\"}}\n",
            env.version
        )),
        Some(o) => fail(format!("error: invalid output format: {o}")),
    }
}

/// Where a node's files are, for tests.
pub fn node_path(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}
