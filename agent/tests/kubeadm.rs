//! The agent's kubeadm driver against the kubeadm stand-in (tests/kubesim): a first control
//! plane, a control-plane join and a worker join with fresh join material, no secret in any
//! process argument, and no second init or join.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cks_agent::kube::kubeadm::{Done, Kubeadm, KubeadmError};
use cks_proto::agent::{InitControlPlane, JoinControlPlane, JoinWorker};

/// The stand-in, built beside this test (`cargo test --workspace` / `make test` build it).
fn stand_in() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("kubeadm");
    assert!(
        path.is_file(),
        "{} not found: build it with `cargo build -p kubesim` (make test does)",
        path.display()
    );
    path
}

/// A node: its root, and a kubeadm wrapper that points the stand-in at it and logs argv.
struct Node {
    root: PathBuf,
    kubeadm: Kubeadm,
    argv_log: PathBuf,
}

fn node(dir: &Path, name: &str) -> Node {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    let argv_log = dir.join(format!("{name}.argv"));
    let wrapper = dir.join(format!("{name}-kubeadm"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nKUBESIM_ROOT='{}' KUBESIM_CLUSTER='{}' exec '{}' \"$@\"\n",
            argv_log.display(),
            root.display(),
            dir.join("cluster").display(),
            stand_in().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kubeadm = Kubeadm::new(wrapper, root.clone(), root.join("run/cks-agent"));
    Node {
        root,
        kubeadm,
        argv_log,
    }
}

const TOKEN: &str = "abcdef.0123456789abcdef";
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn a_three_node_cluster_is_formed_without_secrets_in_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let cp0 = node(dir.path(), "cp-0");
    let init = InitControlPlane {
        control_plane_endpoint: "203.0.113.10:6443".into(),
        certificate_sans: vec!["203.0.113.10".into()],
        pod_cidr: "10.244.0.0/16".into(),
        bootstrap_token: TOKEN.into(),
        token_ttl_seconds: 900,
        certificate_key: KEY.into(),
        node_name: "cp-0".into(),
        ..Default::default()
    };
    assert_eq!(cp0.kubeadm.init(&init).unwrap(), Done::Ran);
    assert!(cp0.root.join("etc/kubernetes/admin.conf").is_file());
    assert_eq!(
        cp0.kubeadm.init(&init).unwrap(),
        Done::AlreadyDone,
        "never init twice"
    );

    let material = cp0
        .kubeadm
        .create_join_material(600, true, 1_800_000_000)
        .unwrap();
    assert_eq!(material.api_server_endpoint, "203.0.113.10:6443");
    assert_ne!(material.token, TOKEN, "a fresh token per operation");
    assert!(material.ca_cert_hash.starts_with("sha256:"));
    assert_eq!(material.certificate_key.len(), 64);
    assert_eq!(material.expires_unix, 1_800_000_600);

    let cp1 = node(dir.path(), "cp-1");
    let join_cp = JoinControlPlane {
        api_server_endpoint: material.api_server_endpoint.clone(),
        token: material.token.clone(),
        ca_cert_hash: material.ca_cert_hash.clone(),
        certificate_key: material.certificate_key.clone(),
        node_name: "cp-1".into(),
    };
    assert_eq!(cp1.kubeadm.join_control_plane(&join_cp).unwrap(), Done::Ran);
    assert!(cp1.root.join("etc/kubernetes/admin.conf").is_file());

    let w0 = node(dir.path(), "w-0");
    let join = JoinWorker {
        api_server_endpoint: material.api_server_endpoint.clone(),
        token: material.token.clone(),
        ca_cert_hash: material.ca_cert_hash.clone(),
        node_name: "w-0".into(),
    };
    assert_eq!(w0.kubeadm.join_worker(&join).unwrap(), Done::Ran);
    assert_eq!(
        w0.kubeadm.join_worker(&join).unwrap(),
        Done::AlreadyDone,
        "never join twice"
    );

    for n in [&cp0, &cp1, &w0] {
        let argv = std::fs::read_to_string(&n.argv_log).unwrap();
        for secret in [
            TOKEN,
            KEY,
            material.token.as_str(),
            material.certificate_key.as_str(),
        ] {
            assert!(
                !argv.contains(secret),
                "secret in kubeadm arguments: {argv}"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(n.root.join("run/cks-agent"))
            .map(|d| d.count())
            .into_iter()
            .collect();
        assert!(
            leftovers.iter().all(|c| *c == 0),
            "config files with secrets left behind"
        );
    }
}

#[test]
fn a_refused_join_names_the_reason_without_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cp0 = node(dir.path(), "cp-0");
    cp0.kubeadm
        .init(&InitControlPlane {
            control_plane_endpoint: "203.0.113.10:6443".into(),
            bootstrap_token: TOKEN.into(),
            token_ttl_seconds: 900,
            certificate_key: KEY.into(),
            node_name: "cp-0".into(),
            ..Default::default()
        })
        .unwrap();
    let w0 = node(dir.path(), "w-0");
    let wrong_token = "zzzzzz.0123456789abcdef";
    let err = w0
        .kubeadm
        .join_worker(&JoinWorker {
            api_server_endpoint: "203.0.113.10:6443".into(),
            token: wrong_token.into(),
            ca_cert_hash: format!("sha256:{}", "0".repeat(64)),
            node_name: "w-0".into(),
        })
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            KubeadmError::Failed {
                command: "join",
                ..
            }
        ),
        "{text}"
    );
    assert!(!text.contains("0123456789abcdef"), "{text}");

    let err = w0
        .kubeadm
        .join_worker(&JoinWorker {
            api_server_endpoint: "203.0.113.10:6443".into(),
            token: TOKEN.into(),
            ca_cert_hash: String::new(),
            node_name: "w-0".into(),
        })
        .unwrap_err();
    assert!(matches!(
        err,
        KubeadmError::InvalidInput {
            field: "ca_cert_hash",
            ..
        }
    ));
    assert!(!w0.root.join("etc/kubernetes/kubelet.conf").exists());
}
