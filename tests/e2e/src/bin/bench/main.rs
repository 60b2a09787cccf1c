//! `make bench`: ISO size, build-time and agent install ratios, measured side by side in one run.
//!
//! On a generated image set shaped like a Kubernetes release (≈ 10 images with shared base
//! layers, `--scale` times the test size), served by a local registry:
//! * ISO bytes ÷ (unique blob bytes + file bytes)          goal ≤ 1.02
//! * ISO bytes ÷ ISO with one archive per image (CKS)        goal ≤ 0.75
//! * warm build time ÷ xorriso alone on the final tree       goal ≤ 1.3
//!
//! and the agent's figures (see `agent.rs`).

mod agent;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cks_fixtures::oci::{ImageSpec, LayerSpec};
use cks_fixtures::registry::RegistryAuth;
use cks_fixtures::upstream::Upstream;
use cks_proto::iso::IsoBundle;
use cks_proto::verify::read_bundle_manifest;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Measure ISO size and build-time ratios")]
struct Args {
    /// The cks-isobuilder binary.
    #[arg(long, default_value = "target/release/cks-isobuilder")]
    isobuilder: PathBuf,
    /// Image size multiplier (1 ≈ 7 MB of images; 24 ≈ 170 MB).
    #[arg(long, default_value_t = 24)]
    scale: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The cks-agent binary (the static build when there is one).
    #[arg(long, default_value = "target/release/cks-agent")]
    agent: PathBuf,
}

/// The upgrade's new image: kube-apiserver of the next minor, on the same base layer.
const UPGRADE_IMAGE: &str = "registry.k8s.io/kube-apiserver:v1.34.0";

fn upgrade_image(scale: usize) -> ImageSpec {
    const KIB: usize = 1024;
    ImageSpec::new("registry.k8s.io", "kube-apiserver", "v1.34.0")
        // Same seed and size as the set's kube base layer: shared.
        .layer(LayerSpec::Random {
            seed: 1,
            size: 512 * KIB * scale,
        })
        .layer(LayerSpec::Random {
            seed: 111,
            size: 1024 * KIB * scale,
        })
        .entrypoint(&["/usr/local/bin/kube-apiserver"])
}

fn main() -> Result<()> {
    let args = Args::parse();
    let isobuilder = args.isobuilder.canonicalize().context("--isobuilder")?;
    let up = Upstream::start_with(RegistryAuth::None, &[upgrade_image(args.scale)], args.scale)?;
    let work = tempfile::tempdir()?;
    let cache = work.path().join("cache");
    let spec = up.spec_file("amd64", "")?;
    let per_image_spec = write_per_image(&up, work.path())?;

    // Cold build fills the cache.
    let shared_out = work.path().join("shared");
    cks_e2e::capture(
        &isobuilder,
        &[
            "build",
            p(&spec),
            "--out",
            p(&shared_out),
            "--cache",
            p(&cache),
        ],
    )?;
    let iso = shared_out.join("setup-v1.33.1-x86_64.iso");
    let per_out = work.path().join("per-image");
    cks_e2e::capture(
        &isobuilder,
        &[
            "build",
            p(&per_image_spec),
            "--out",
            p(&per_out),
            "--cache",
            p(&cache),
        ],
    )?;
    let per_iso = per_out.join("setup-v1.33.1-x86_64.iso");

    let iso_bytes = std::fs::metadata(&iso)?.len();
    let per_bytes = std::fs::metadata(&per_iso)?.len();
    let manifest = read_bundle_manifest(&IsoBundle::open(&iso)?)?;
    let file_bytes: u64 = manifest
        .files
        .iter()
        .filter(|f| !f.path.starts_with("docker/"))
        .map(|f| f.size)
        .sum();
    let content = manifest.unique_blob_bytes() + file_bytes;

    // The final tree, for xorriso alone.
    let tree = work.path().join("tree");
    extract(&iso, &tree)?;

    let mut warm = Vec::new();
    let mut alone = Vec::new();
    for i in 0..args.runs {
        // Interleave the two so both see the same machine noise.
        let out = work.path().join(format!("warm-{i}"));
        let (_, t) = cks_e2e::capture(
            &isobuilder,
            &["build", p(&spec), "--out", p(&out), "--cache", p(&cache)],
        )?;
        warm.push(t);
        std::fs::remove_dir_all(&out)?;
        alone.push(xorriso_alone(
            &tree,
            &work.path().join(format!("alone-{i}.iso")),
        )?);
    }
    let warm = median(warm);
    let alone = median(alone);

    println!(
        "image set: {} images, {} unique blobs",
        manifest.images.len(),
        manifest.blobs.len()
    );
    println!("ISO (shared layout)          {:>14} bytes", iso_bytes);
    println!("unique blobs + files         {:>14} bytes", content);
    println!("ISO (one archive per image)  {:>14} bytes", per_bytes);
    println!(
        "warm build                   {:>14.3} s (median of {})",
        warm.as_secs_f64(),
        args.runs
    );
    println!(
        "xorriso alone on final tree  {:>14.3} s (median of {})",
        alone.as_secs_f64(),
        args.runs
    );
    println!();
    report(
        "ISO bytes / (unique blobs + files)",
        iso_bytes as f64 / content as f64,
        1.02,
    );
    report(
        "ISO bytes / per-image-archive ISO",
        iso_bytes as f64 / per_bytes as f64,
        0.75,
    );
    report(
        "warm build time / xorriso alone",
        warm.as_secs_f64() / alone.as_secs_f64(),
        1.3,
    );

    // The agent: the same bundle, and an upgrade bundle with one more image on shared layers.
    let upgrade_spec = work.path().join("upgrade.toml");
    std::fs::write(
        &upgrade_spec,
        up.spec_text("amd64").replace(
            "kubeadm = true",
            &format!("kubeadm = true\nextra = [\"{UPGRADE_IMAGE}\"]"),
        ),
    )?;
    let upgrade_out = work.path().join("upgrade");
    cks_e2e::capture(
        &isobuilder,
        &[
            "build",
            p(&upgrade_spec),
            "--out",
            p(&upgrade_out),
            "--cache",
            p(&cache),
        ],
    )?;
    let upgrade_tree = work.path().join("upgrade-tree");
    extract(&upgrade_out.join("setup-v1.33.1-x86_64.iso"), &upgrade_tree)?;
    agent::run(
        &args.agent,
        &agent::Bundles {
            tree: &tree,
            upgrade_tree: &upgrade_tree,
        },
        work.path(),
        args.runs,
    )?;
    Ok(())
}

/// Unpacks an ISO as a kernel mount would show it.
fn extract(iso: &Path, dir: &Path) -> Result<()> {
    let status = Command::new("xorriso")
        .args([
            "-no_rc",
            "-report_about",
            "SORRY",
            "-osirrox",
            "on",
            "-indev",
        ])
        .arg(iso)
        .args(["-extract", "/"])
        .arg(dir)
        .status()?;
    ensure!(status.success(), "xorriso -extract failed");
    Ok(())
}

fn report(name: &str, value: f64, goal: f64) {
    let verdict = if value <= goal { "meets" } else { "MISSES" };
    println!("{name:<40} {value:>7.3}   (goal <= {goal}, {verdict})");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn xorriso_alone(tree: &Path, out: &Path) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("xorriso")
        .args(["-no_rc", "-report_about", "SORRY", "-outdev"])
        .arg(out)
        .args([
            "-volid",
            "CDROM",
            "-joliet",
            "on",
            "-compliance",
            "iso_9660_level=3",
            "-map",
        ])
        .arg(tree)
        .args(["/", "-commit"])
        .status()?;
    ensure!(status.success(), "xorriso failed");
    let elapsed = started.elapsed();
    std::fs::remove_file(out)?;
    Ok(elapsed)
}

fn write_per_image(up: &Upstream, dir: &Path) -> Result<PathBuf> {
    let text = up
        .spec_text("amd64")
        .replace("kubeadm = true", "kubeadm = true\nlayout = \"per-image\"");
    let path = dir.join("per-image.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}
