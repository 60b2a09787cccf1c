//! The agent's figures, side by side in the same run:
//! * install (verify + install + import) ÷ the floor (`sha256sum` of the bundle's files + raw
//!   `ctr images import` of the same archive), goal ≤ 1.15;
//! * import of an upgrade bundle sharing most blobs ÷ a cold import of it, goal ≤ 0.35;
//! * agent binary size (goal ≤ 15 MB) and idle RSS while connected to a controller (≤ 20 MB).
//!
//! Every measurement uses a fresh private containerd, except the upgrade one, which runs on the
//! node the first bundle was installed on. What each import sent to containerd (from the
//! journal's `images.import` record) is printed beside the times: the upgrade should send only
//! the new image's manifest, config and own layers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cks_controller::agents::{AgentHub, EveryNode, MemoryTokens, NodeKey};
use cks_controller::pki::{AgentCa, NodeIdentity};
use cks_fixtures::containerd::Containerd;
use cks_proto::agent::NodeRole;

use super::{median, p, report};

/// Trees of the bundle and the upgrade bundle, as a kernel-mounted CD-ROM shows them.
pub struct Bundles<'a> {
    /// The bundle.
    pub tree: &'a Path,
    /// The upgrade bundle (most blobs shared with `tree`).
    pub upgrade_tree: &'a Path,
}

pub fn run(agent: &Path, bundles: &Bundles<'_>, work: &Path, runs: usize) -> Result<()> {
    let agent = agent.canonicalize().context("--agent")?;
    let mut install = Vec::new();
    let mut floor = Vec::new();
    let mut cold_upgrade = Vec::new();
    let mut warm_upgrade = Vec::new();
    let mut warm_sent = String::new();
    let mut cold_sent = String::new();
    for i in 0..runs {
        // Interleaved, so both sides see the same machine noise.
        let ctrd = Containerd::start()?;
        floor.push(floor_time(bundles.tree, &ctrd)?);
        drop(ctrd);

        let ctrd = Containerd::start()?;
        let root = work.join(format!("node-{i}"));
        install.push(agent_install(&agent, bundles.tree, &root, &ctrd)?);
        warm_upgrade.push(agent_install(&agent, bundles.upgrade_tree, &root, &ctrd)?);
        warm_sent = images_import_record(&root)?;
        drop(ctrd);

        let ctrd = Containerd::start()?;
        let cold_root = work.join(format!("cold-{i}"));
        cold_upgrade.push(agent_install(
            &agent,
            bundles.upgrade_tree,
            &cold_root,
            &ctrd,
        )?);
        cold_sent = images_import_record(&cold_root)?;
        drop(ctrd);
    }
    let (install, floor) = (median(install), median(floor));
    let (warm_upgrade, cold_upgrade) = (median(warm_upgrade), median(cold_upgrade));
    let size = shipped_size(&agent, work)?;
    let rss = idle_rss(&agent, bundles.tree, work)?;

    println!();
    println!(
        "agent install (verify+install+import) {:>9.3} s (median of {runs})",
        install.as_secs_f64()
    );
    println!(
        "floor (sha256sum + ctr import)        {:>9.3} s",
        floor.as_secs_f64()
    );
    println!(
        "upgrade install on the same node      {:>9.3} s",
        warm_upgrade.as_secs_f64()
    );
    println!(
        "upgrade install on a fresh node       {:>9.3} s",
        cold_upgrade.as_secs_f64()
    );
    println!("  same node:  {warm_sent}");
    println!("  fresh node: {cold_sent}");
    println!(
        "agent binary, stripped as shipped     {:>9.1} MB",
        size as f64 / 1e6
    );
    println!(
        "agent idle RSS (connected, installed) {:>9.1} MB",
        rss as f64 / 1e6
    );
    println!();
    report(
        "agent install / floor",
        install.as_secs_f64() / floor.as_secs_f64(),
        1.15,
    );
    report(
        "upgrade import / cold import",
        warm_upgrade.as_secs_f64() / cold_upgrade.as_secs_f64(),
        0.35,
    );
    report("agent binary MB", size as f64 / 1e6, 15.0);
    report("agent idle RSS MB", rss as f64 / 1e6, 20.0);
    Ok(())
}

/// Size of the binary as it ships in a node template: without debug sections (`strip`).
fn shipped_size(agent: &Path, work: &Path) -> Result<u64> {
    let stripped = work.join("cks-agent.stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(agent)
        .status()
        .context("running strip (binutils)")?;
    ensure!(status.success(), "strip failed");
    Ok(std::fs::metadata(&stripped)?.len())
}

/// What any installer must do at least: hash every file, import the archive.
fn floor_time(tree: &Path, ctrd: &Containerd) -> Result<Duration> {
    let files = bundle_files(tree)?;
    let started = Instant::now();
    let status = Command::new("sha256sum")
        .args(&files)
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "sha256sum failed");
    for archive in files.iter().filter(|f| f.starts_with(tree.join("docker"))) {
        ctrd.import(archive)?;
    }
    Ok(started.elapsed())
}

fn bundle_files(tree: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The detail of the `images.import` step in the journal of the node at `root` (what was
/// imported and sent).
fn images_import_record(root: &Path) -> Result<String> {
    let path = root.join("var/lib/cks-agent/journal.json");
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("{path:?}"))?)?;
    journal["bundle"]["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["step"] == "images.import"))
        .and_then(|s| s["detail"].as_str())
        .map(str::to_string)
        .context("no images.import step in the journal")
}

fn agent_install(agent: &Path, tree: &Path, root: &Path, ctrd: &Containerd) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new(agent)
        .args(["install", "--bundle", p(tree), "--root", p(root)])
        .arg("--containerd-socket")
        .arg(ctrd.socket())
        .env("RUST_LOG", "warn")
        .output()?;
    let elapsed = started.elapsed();
    ensure!(
        out.status.success(),
        "cks-agent install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

/// RSS of `cks-agent run` once it is enrolled, connected and done installing.
fn idle_rss(agent: &Path, tree: &Path, work: &Path) -> Result<u64> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let ca = Arc::new(AgentCa::load_or_create(&work.join("ca"))?);
        let server = ca.issue_server(&["127.0.0.1".to_string()])?;
        let hub = AgentHub::new(ca.clone(), Arc::new(MemoryTokens::default()), Arc::new(EveryNode), Duration::from_secs(1));
        let (addr, _server) = hub.clone().spawn("127.0.0.1:0".parse()?, server).await?;
        let token = hub.issue_token(
            NodeIdentity { cluster_id: "bench".into(), node_name: "node-1".into(), role: NodeRole::Worker },
            Duration::from_secs(600),
        );
        let root = work.join("idle-node");
        let config = root.join("etc/cks-agent/config.toml");
        std::fs::create_dir_all(config.parent().context("config dir")?)?;
        std::fs::write(
            &config,
            format!(
                "[controller]\naddresses = [\"{addr}\"]\nca_fingerprint = \"{}\"\nenrollment_token = \"{token}\"\nnode_name = \"node-1\"\n",
                ca.fingerprint()
            ),
        )?;
        let ctrd = Containerd::start()?;
        let mut child = Command::new(agent)
            .args(["run", "--bundle", p(tree), "--root", p(&root)])
            .arg("--containerd-socket")
            .arg(ctrd.socket())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let key = NodeKey::new("bench", "node-1");
        let waited = hub
            .wait_for(&key, "bundle installed", Duration::from_secs(120), |s| {
                s.connected
                    && s.hello.as_ref().is_some_and(|h| h.steps.iter().any(|st| st.step == "bundle.installed"))
            })
            .await;
        // Let it settle into heartbeats.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        waited?;
        let status = status?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")?;
        Ok(kb * 1024)
    })
}
