//! The systemctl stand-in as a process: the kubelet unit and its drop-in resolved as systemd
//! resolves them, start/stop/restart/is-active/enable/disable, pid file, the simulated
//! containerd, and systemd's errors and exit codes for everything else.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Sim, eventually, failed, ok};

#[test]
fn the_kubelet_unit_runs_with_its_drop_in_resolved_and_stops_cleanly() {
    let sim = Sim::new();
    let node = sim.node("n-1", 1, "v1.33.1");
    // A kubelet that records its arguments and environment, then waits to be stopped.
    let record = node.root.join("kubelet.args");
    std::fs::write(
        node.root.join("opt/bin/kubelet"),
        format!(
            "#!/bin/sh\necho \"$@\" > '{0}'\necho \"HOME=$HOME FOO=$FOO\" >> '{0}'\nexec sleep 60\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all(node.root.join("var/lib/kubelet")).unwrap();
    std::fs::write(
        node.root.join("var/lib/kubelet/kubeadm-flags.env"),
        "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///run/containerd/containerd.sock --hostname-override=n-1\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(node.root.join("etc/default")).unwrap();
    std::fs::write(
        node.root.join("etc/default/kubelet"),
        "KUBELET_EXTRA_ARGS=--node-labels=a=b\n",
    )
    .unwrap();

    let inactive = node.systemctl(&sim, &["is-active", "kubelet"]);
    assert_eq!(inactive.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&inactive.stdout), "inactive\n");
    assert_eq!(
        node.systemctl(&sim, &["is-enabled", "kubelet"])
            .status
            .code(),
        Some(1)
    );

    let enabled = node.systemctl(&sim, &["enable", "--now", "kubelet"]);
    ok(&enabled);
    assert!(String::from_utf8_lossy(&enabled.stderr).contains("Created symlink"));
    assert_eq!(
        ok(&node.systemctl(&sim, &["is-enabled", "kubelet"])),
        "enabled\n"
    );
    assert_eq!(
        ok(&node.systemctl(&sim, &["is-active", "kubelet"])),
        "active\n"
    );
    let args = eventually(Duration::from_secs(10), "the kubelet's arguments", || {
        std::fs::read_to_string(&record)
            .ok()
            .filter(|t| t.lines().count() == 2)
    });
    assert_eq!(
        args.lines().next().unwrap(),
        "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf --config=/var/lib/kubelet/config.yaml --container-runtime-endpoint=unix:///run/containerd/containerd.sock --hostname-override=n-1 --node-labels=a=b"
    );
    assert_eq!(
        args.lines().nth(1).unwrap(),
        "HOME= FOO=",
        "systemd passes no caller environment"
    );
    let pid_file = node.root.join("run/kubesim/kubelet.pid");
    let pid = |text: String| text.split_whitespace().next().unwrap().to_string();
    let first = pid(std::fs::read_to_string(&pid_file).unwrap());

    // start is idempotent; restart makes a new process; stop ends it.
    ok(&node.systemctl(&sim, &["start", "kubelet"]));
    assert_eq!(pid(std::fs::read_to_string(&pid_file).unwrap()), first);
    ok(&node.systemctl(&sim, &["restart", "kubelet.service"]));
    let second = pid(std::fs::read_to_string(&pid_file).unwrap());
    assert_ne!(second, first);
    assert!(
        !std::path::Path::new(&format!("/proc/{first}")).exists()
            || std::fs::read_to_string(format!("/proc/{first}/stat"))
                .unwrap_or_default()
                .contains(") Z")
    );
    ok(&node.systemctl(&sim, &["stop", "kubelet"]));
    assert_eq!(
        node.systemctl(&sim, &["is-active", "--quiet", "kubelet"])
            .status
            .code(),
        Some(3)
    );
    assert!(!pid_file.exists());
    ok(&node.systemctl(&sim, &["disable", "kubelet"]));
    assert_eq!(
        node.systemctl(&sim, &["is-enabled", "kubelet"])
            .status
            .code(),
        Some(1)
    );

    // containerd is simulated; everything else is unknown to this systemd.
    ok(&node.systemctl(&sim, &["restart", "containerd"]));
    assert_eq!(
        ok(&node.systemctl(&sim, &["is-active", "containerd"])),
        "active\n"
    );
    ok(&node.systemctl(&sim, &["daemon-reload"]));
    let missing = node.systemctl(&sim, &["start", "docker"]);
    assert_eq!(missing.status.code(), Some(5));
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr),
        "Failed to start docker.service: Unit docker.service not found.\n"
    );
    assert!(
        failed(&node.systemctl(&sim, &["frobnicate", "kubelet"]))
            .contains("Unknown command verb 'frobnicate'")
    );
    let log = std::fs::read_to_string(node.root.join("var/log/kubesim/systemctl.log")).unwrap();
    assert!(
        log.contains("systemctl enable --now kubelet")
            && log.contains("containerd.service: simulated restart"),
        "{log}"
    );
}

#[test]
fn a_missing_unit_or_program_fails_like_systemd() {
    let sim = Sim::new();
    let node = sim.node("n-1", 1, "v1.33.1");
    std::fs::remove_file(node.root.join("opt/bin/kubelet")).unwrap();
    let out = node.systemctl(&sim, &["start", "kubelet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Job for kubelet.service failed"));
    let log = std::fs::read_to_string(node.root.join("var/log/kubesim/systemctl.log")).unwrap();
    assert!(
        log.contains("failed to locate executable /opt/bin/kubelet"),
        "{log}"
    );
    std::fs::remove_dir_all(node.root.join("etc/systemd")).unwrap();
    let out = node.systemctl(&sim, &["enable", "kubelet"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unit file kubelet.service does not exist")
    );
}

#[test]
fn the_bundle_wrappers_refuse_to_run_outside_a_simulated_node() {
    let sim = Sim::new();
    let node = sim.node("n-1", 1, "v1.34.0");
    let mut command = std::process::Command::new(node.root.join("opt/bin/kubeadm"));
    command.arg("version").env_remove("KUBESIM_BIN");
    let out = sim.output(command);
    assert_eq!(out.status.code(), Some(127));
    let mut command = node.command(&node.root.join("opt/bin/kubelet"));
    command.arg("--version");
    assert_eq!(ok(&sim.output(command)), "Kubernetes v1.34.0\n");
    let mut command = node.command(&node.root.join("opt/bin/kubelet"));
    command.arg("--no-such-flag");
    assert!(failed(&sim.output(command)).contains("unknown flag: --no-such-flag"));
}
