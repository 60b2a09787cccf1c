//! The kubeadm stand-in keeps kubeadm's contract: files written, join command printed, the
//! refusals a node meets (second init, wrong token, wrong CA hash, expired material).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kubesim::cluster::{ClusterDir, ClusterState};
use kubesim::kubeadm::{Env, Outcome, node_path, run};
use kubesim::kubeconfig::Kubeconfig;

const TOKEN: &str = "abcdef.0123456789abcdef";
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Cluster {
    dir: tempfile::TempDir,
    now: u64,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            now: 1_800_000_000,
        }
    }

    fn node(&self, name: &str) -> PathBuf {
        let root = self.dir.path().join("nodes").join(name);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    fn kubeadm(&self, node: &Path, args: &[&str]) -> Outcome {
        let env = Env::new(
            node.to_path_buf(),
            self.dir.path().join("cluster"),
            "v1.33.1",
            self.now,
        );
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run(&args, &env, &mut std::io::empty())
    }

    /// kubeadm's view of the (only) cluster.
    fn state(&self) -> ClusterState {
        let dirs = ClusterDir::all(&self.dir.path().join("cluster"));
        assert_eq!(dirs.len(), 1, "one cluster");
        dirs[0].read_state().unwrap()
    }

    fn init(&self, node: &Path) -> Outcome {
        self.kubeadm(
            node,
            &[
                "init",
                "--control-plane-endpoint",
                "203.0.113.10:6443",
                "--upload-certs",
                "--certificate-key",
                KEY,
                "--token",
                TOKEN,
                "--token-ttl",
                "2h0m0s",
                "--apiserver-cert-extra-sans",
                "203.0.113.10,api.example",
                "--pod-network-cidr",
                "10.244.0.0/16",
                "--node-name",
                "cp-0",
            ],
        )
    }
}

#[track_caller]
fn ok(outcome: &Outcome) -> &str {
    assert_eq!(outcome.code, 0, "stderr: {}", outcome.stderr);
    &outcome.stdout
}

#[track_caller]
fn refused<'a>(outcome: &'a Outcome, needle: &str) -> &'a str {
    assert_eq!(
        outcome.code, 1,
        "expected a failure, stdout: {}",
        outcome.stdout
    );
    assert!(
        outcome.stderr.contains(needle),
        "{needle:?} not in: {}",
        outcome.stderr
    );
    &outcome.stderr
}

/// The `--discovery-token-ca-cert-hash` from a printed join command.
fn printed_hash(stdout: &str) -> String {
    let at = stdout.find("sha256:").unwrap();
    stdout[at..].split_whitespace().next().unwrap().to_string()
}

#[test]
fn init_writes_kubeadms_files_prints_the_join_command_and_refuses_a_second_init() {
    let c = Cluster::new();
    let cp = c.node("cp-0");
    let out = c.init(&cp);
    let stdout = ok(&out);
    for file in [
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/pki/ca.crt",
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        "/var/lib/kubelet/config.yaml",
        "/var/lib/kubelet/kubeadm-flags.env",
    ] {
        assert!(node_path(&cp, file).is_file(), "{file} not written");
    }
    let admin = std::fs::read_to_string(node_path(&cp, "/etc/kubernetes/admin.conf")).unwrap();
    assert!(admin.contains("server: https://203.0.113.10:6443"));
    assert!(stdout.contains("kubeadm join 203.0.113.10:6443 --token abcdef.0123456789abcdef"));
    assert!(stdout.contains(&format!("--control-plane --certificate-key {KEY}")));
    let hash = printed_hash(stdout);
    assert_eq!(hash.len(), "sha256:".len() + 64);
    // Real certificates: the serving certificate covers the endpoint and the extra SANs, the
    // admin kubeconfig's client certificate names kubeadm's admin identity, the discovery hash
    // is the CA's.
    let ca = std::fs::read_to_string(node_path(&cp, "/etc/kubernetes/pki/ca.crt")).unwrap();
    assert_eq!(kubesim::pki::cert_hash_of_pem(&ca).unwrap(), hash);
    let serving =
        std::fs::read_to_string(node_path(&cp, "/etc/kubernetes/pki/apiserver.crt")).unwrap();
    let sans = kubesim::pki::sans_of_pem(&serving);
    for name in [
        "api.example",
        "203.0.113.10",
        "10.96.0.1",
        "kubernetes.default",
        "cp-0",
    ] {
        assert!(sans.iter().any(|s| s == name), "{name} not in {sans:?}");
    }
    let kubeconfig = Kubeconfig::from_yaml(&admin).unwrap();
    let der = kubesim::pki::first_cert_der(&kubeconfig.client_cert_pem).unwrap();
    assert_eq!(
        kubesim::pki::subject_of_der(&der).unwrap(),
        (
            "kubernetes-admin".to_string(),
            vec!["kubeadm:cluster-admins".to_string()]
        )
    );
    assert!(!admin.contains("stand-in"), "no placeholder credentials");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node_path(&cp, "/etc/kubernetes/admin.conf"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let apiserver = std::fs::read_to_string(node_path(
        &cp,
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
    ))
    .unwrap();
    assert!(apiserver.contains("- --secure-port=6443"), "{apiserver}");
    assert!(apiserver.contains("image: registry.k8s.io/kube-apiserver:v1.33.1"));

    refused(
        &c.init(&cp),
        "[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]",
    );
}

#[test]
fn workers_and_control_planes_join_only_with_valid_material() {
    let c = Cluster::new();
    let cp = c.node("cp-0");
    let hash = printed_hash(ok(&c.init(&cp)));
    let w = c.node("w-0");
    let base = ["join", "203.0.113.10:6443", "--node-name", "w-0"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra.iter()).copied().collect()
    }

    refused(
        &c.kubeadm(&w, &with(&base, &["--bogus"])),
        "unknown flag: --bogus",
    );
    refused(
        &c.kubeadm(&w, &with(&base, &["--token", TOKEN])),
        "--discovery-token-unsafe-skip-ca-verification",
    );
    refused(
        &c.kubeadm(
            &w,
            &with(
                &base,
                &["--token", "nope", "--discovery-token-ca-cert-hash", &hash],
            ),
        ),
        "was not of the form",
    );
    refused(
        &c.kubeadm(
            &w,
            &with(
                &base,
                &[
                    "--token",
                    "zzzzzz.0123456789abcdef",
                    "--discovery-token-ca-cert-hash",
                    &hash,
                ],
            ),
        ),
        "could not find a JWS signature in the cluster-info ConfigMap for token ID \"zzzzzz\"",
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    refused(
        &c.kubeadm(
            &w,
            &with(
                &base,
                &["--token", TOKEN, "--discovery-token-ca-cert-hash", &wrong],
            ),
        ),
        "none of the public keys",
    );
    assert!(
        !node_path(&w, "/etc/kubernetes/kubelet.conf").exists(),
        "refusals leave the node untouched"
    );

    ok(&c.kubeadm(
        &w,
        &with(
            &base,
            &["--token", TOKEN, "--discovery-token-ca-cert-hash", &hash],
        ),
    ));
    assert!(node_path(&w, "/etc/kubernetes/kubelet.conf").is_file());
    assert!(!node_path(&w, "/etc/kubernetes/admin.conf").exists());
    refused(
        &c.kubeadm(
            &w,
            &with(
                &base,
                &["--token", TOKEN, "--discovery-token-ca-cert-hash", &hash],
            ),
        ),
        "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]",
    );

    let cp1 = c.node("cp-1");
    let cp_join = |key: &str| {
        c.kubeadm(
            &cp1,
            &[
                "join",
                "203.0.113.10:6443",
                "--token",
                TOKEN,
                "--discovery-token-ca-cert-hash",
                &hash,
                "--control-plane",
                "--certificate-key",
                key,
                "--node-name",
                "cp-1",
            ],
        )
    };
    refused(&cp_join(&"f".repeat(64)), "error downloading certs");
    ok(&cp_join(KEY));
    assert!(node_path(&cp1, "/etc/kubernetes/admin.conf").is_file());
    assert!(node_path(&cp1, "/etc/kubernetes/pki/apiserver.crt").is_file());
    assert!(node_path(&cp1, "/etc/kubernetes/manifests/kube-apiserver.yaml").is_file());
    // The worker's kubelet credentials are its own node identity, signed by the cluster CA.
    let kubelet = Kubeconfig::from_yaml(
        &std::fs::read_to_string(node_path(&w, "/etc/kubernetes/kubelet.conf")).unwrap(),
    )
    .unwrap();
    let der = kubesim::pki::first_cert_der(&kubelet.client_cert_pem).unwrap();
    assert_eq!(
        kubesim::pki::subject_of_der(&der).unwrap(),
        (
            "system:node:w-0".to_string(),
            vec!["system:nodes".to_string()]
        )
    );
}

#[test]
fn tokens_and_certificate_keys_expire_and_fresh_ones_can_be_made_on_a_control_plane() {
    let mut c = Cluster::new();
    let cp = c.node("cp-0");
    let hash = printed_hash(ok(&c.init(&cp)));
    c.now += 3 * 3600; // past the 2h token TTL and the 2h certificate key lifetime
    let w = c.node("w-0");
    refused(
        &c.kubeadm(
            &w,
            &[
                "join",
                "203.0.113.10:6443",
                "--token",
                TOKEN,
                "--discovery-token-ca-cert-hash",
                &hash,
            ],
        ),
        "could not find a JWS signature",
    );

    refused(
        &c.kubeadm(&w, &["token", "create"]),
        "failed to load admin kubeconfig",
    );
    let join = ok(&c.kubeadm(
        &cp,
        &["token", "create", "--ttl", "15m", "--print-join-command"],
    ))
    .trim()
    .to_string();
    assert!(
        join.starts_with("kubeadm join 203.0.113.10:6443 --token "),
        "{join}"
    );
    let mut args: Vec<&str> = join.split_whitespace().skip(1).collect();
    args.extend(["--node-name", "w-0"]);
    ok(&c.kubeadm(&w, &args));

    let cp1 = c.node("cp-1");
    let fresh_token = ok(&c.kubeadm(&cp, &["token", "create", "--ttl", "15m"]))
        .trim()
        .to_string();
    let cp_join = |c: &Cluster| {
        c.kubeadm(
            &cp1,
            &[
                "join",
                "203.0.113.10:6443",
                "--token",
                &fresh_token,
                "--discovery-token-ca-cert-hash",
                &hash,
                "--control-plane",
                "--certificate-key",
                KEY,
                "--node-name",
                "cp-1",
            ],
        )
    };
    refused(&cp_join(&c), "kubeadm-certs");
    let uploaded = ok(&c.kubeadm(
        &cp,
        &[
            "init",
            "phase",
            "upload-certs",
            "--upload-certs",
            "--certificate-key",
            KEY,
        ],
    ))
    .to_string();
    assert!(uploaded.contains(KEY));
    ok(&cp_join(&c));
}

#[test]
fn reset_removes_what_init_wrote_and_the_node() {
    let c = Cluster::new();
    let cp = c.node("cp-0");
    ok(&c.init(&cp));
    refused(&c.kubeadm(&cp, &["reset"]), "Aborted reset operation");
    ok(&c.kubeadm(&cp, &["reset", "-f"]));
    assert!(!node_path(&cp, "/etc/kubernetes/admin.conf").exists());
    assert!(!node_path(&cp, "/etc/kubernetes/manifests").exists());
    let state = c.state();
    assert!(!state.nodes.iter().any(|n| n.name == "cp-0"), "{state:?}");
}

#[test]
fn upgrades_follow_the_kubeadm_version() {
    let c = Cluster::new();
    let cp = c.node("cp-0");
    ok(&c.init(&cp));
    refused(
        &c.kubeadm(&cp, &["upgrade", "apply", "v1.34.0", "-y"]),
        "Upgrade kubeadm first",
    );
    let newer = Env::new(cp.clone(), c.dir.path().join("cluster"), "v1.35.0", c.now);
    let skip = run(
        &[
            "upgrade".into(),
            "apply".into(),
            "v1.35.0".into(),
            "-y".into(),
        ],
        &newer,
        &mut std::io::empty(),
    );
    refused(&skip, "kubeadm can upgrade only 1 minor version at a time");
    ok(&c.kubeadm(&cp, &["upgrade", "apply", "v1.33.1", "-y"]));
    ok(&c.kubeadm(&cp, &["upgrade", "node"]));
    assert_eq!(
        ok(&c.kubeadm(&cp, &["version", "-o", "short"])),
        "v1.33.1\n"
    );
}

#[test]
fn the_binary_refuses_to_run_without_a_test_root() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubeadm"))
        .arg("version")
        .env_remove("KUBESIM_ROOT")
        .env_remove("KUBESIM_CLUSTER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KUBESIM_ROOT"));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kubeadm"))
        .args(["init", "--unknown"])
        .env("KUBESIM_ROOT", dir.path().join("node"))
        .env("KUBESIM_CLUSTER", dir.path().join("cluster"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag: --unknown"));
}

#[test]
fn secrets_can_come_from_a_config_file_instead_of_arguments() {
    let c = Cluster::new();
    let cp = c.node("cp-0");
    let init_cfg = c.dir.path().join("init.yaml");
    std::fs::write(
        &init_cfg,
        format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: {TOKEN}\n  ttl: 1h0m0s\ncertificateKey: {KEY}\nnodeRegistration:\n  name: cp-0\n---\napiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\ncontrolPlaneEndpoint: 203.0.113.10:6443\napiServer:\n  certSANs: [203.0.113.10, api.example]\nnetworking:\n  podSubnet: 10.244.0.0/16\n"
        ),
    )
    .unwrap();
    let cfg = init_cfg.to_str().unwrap();
    refused(
        &c.kubeadm(&cp, &["init", "--config", cfg, "--token", TOKEN]),
        "can not mix '--config' with arguments",
    );
    let stdout = ok(&c.kubeadm(&cp, &["init", "--config", cfg, "--upload-certs"])).to_string();
    let hash = printed_hash(&stdout);
    assert!(stdout.contains(&format!("--token {TOKEN}")));
    let serving =
        std::fs::read_to_string(node_path(&cp, "/etc/kubernetes/pki/apiserver.crt")).unwrap();
    assert!(kubesim::pki::sans_of_pem(&serving).contains(&"api.example".to_string()));

    let join_cfg = |name: &str, control_plane: bool| {
        let path = c.dir.path().join(format!("join-{name}.yaml"));
        let cp_part = if control_plane {
            format!("controlPlane:\n  certificateKey: {KEY}\n")
        } else {
            String::new()
        };
        std::fs::write(
            &path,
            format!(
                "apiVersion: kubeadm.k8s.io/v1beta4\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    apiServerEndpoint: 203.0.113.10:6443\n    token: {TOKEN}\n    caCertHashes: [\"{hash}\"]\n{cp_part}nodeRegistration:\n  name: {name}\n"
            ),
        )
        .unwrap();
        path
    };
    let w = c.node("w-0");
    let cfg = join_cfg("w-0", false);
    ok(&c.kubeadm(&w, &["join", "--config", cfg.to_str().unwrap()]));
    assert!(!node_path(&w, "/etc/kubernetes/admin.conf").exists());
    let cp1 = c.node("cp-1");
    let cfg = join_cfg("cp-1", true);
    ok(&c.kubeadm(&cp1, &["join", "--config", cfg.to_str().unwrap()]));
    assert!(node_path(&cp1, "/etc/kubernetes/admin.conf").is_file());
    let names: Vec<String> = c.state().nodes.into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["cp-0", "w-0", "cp-1"]);
}
