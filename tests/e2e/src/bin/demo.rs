//! `make demo`: builds a real bundle ISO from local fixtures, verifies it, shows it, and (as
//! root) imports its images into a private containerd the way a stock CKS node does.
//!
//! Until the controller exists this is the main job end to end: an "upstream" (fake Kubernetes
//! release files with published checksums on a file server, a Kubernetes-like image set in a
//! real docker-registry) on 127.0.0.1 → `cks-isobuilder build` → `verify` → `inspect`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cks_fixtures::registry::RegistryAuth;
use cks_fixtures::upstream::Upstream;
use cks_proto::verify::BundleSource;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Build, verify and inspect a bundle ISO from local fixtures")]
struct Args {
    /// The cks-isobuilder binary.
    #[arg(long, default_value = "target/release/cks-isobuilder")]
    isobuilder: PathBuf,
    /// Where the ISO goes.
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let isobuilder = args.isobuilder.canonicalize().context("--isobuilder")?;
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;

    step("starting a local upstream: file server + docker-registry on 127.0.0.1");
    let upstream = Upstream::start(RegistryAuth::None)?;
    println!("    files    {}", upstream.files.url());
    println!(
        "    registry {} ({} images)",
        upstream.registry.url(),
        upstream.images.len()
    );
    let spec = out.join("release.toml");
    std::fs::write(&spec, upstream.spec_text("amd64"))?;
    println!("    spec     {}", spec.display());

    step("cks-isobuilder build");
    let cache = out.join("cache");
    let built = cks_e2e::run(
        &isobuilder,
        &["build", s(&spec), "--out", s(&out), "--cache", s(&cache)],
    )?;
    println!("    built in {:.1}s", built.as_secs_f64());
    let iso = out.join("setup-v1.33.1-x86_64.iso");

    step("cks-isobuilder verify");
    cks_e2e::run(&isobuilder, &["verify", s(&iso)])?;

    step("cks-isobuilder inspect");
    cks_e2e::run(&isobuilder, &["inspect", s(&iso)])?;

    step("rebuild with another cache: same sha256 (reproducible)");
    let again = out.join("again");
    let other_cache = out.join("cache-2");
    let (json, _) = cks_e2e::capture(
        &isobuilder,
        &[
            "build",
            s(&spec),
            "--out",
            s(&again),
            "--cache",
            s(&other_cache),
            "--json",
        ],
    )?;
    let second: serde_json::Value = serde_json::from_str(&json)?;
    let first = std::fs::read_to_string(out.join("setup-v1.33.1-x86_64.iso.sha256"))?;
    let first = first.split_whitespace().next().unwrap_or_default();
    println!(
        "    first  {first}\n    second {}",
        second["sha256"].as_str().unwrap_or_default()
    );
    anyhow::ensure!(second["sha256"].as_str() == Some(first), "builds differ");
    std::fs::remove_dir_all(&again)?;
    std::fs::remove_dir_all(&other_cache)?;

    if cks_fixtures::tools::require_root_or_skip("the containerd import step") {
        step("stock CKS node loop: for f in docker/*.tar; do ctr -n k8s.io images import $f; done");
        let containerd = cks_fixtures::containerd::Containerd::start()?;
        let bundle = cks_proto::iso::IsoBundle::open(&iso)?;
        let scratch = tempfile::tempdir()?;
        for file in bundle
            .list_files()?
            .iter()
            .filter(|f| f.path.starts_with("docker/"))
        {
            let dest = scratch.path().join(file.path.replace('/', "_"));
            std::io::copy(
                &mut bundle.open(&file.path)?,
                &mut std::fs::File::create(&dest)?,
            )?;
            containerd.import(&dest)?;
        }
        for (name, digest) in containerd.images()? {
            println!("    {name}  {digest}");
        }
    }
    step(&format!("done: {}", iso.display()));
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap_or_default()
}
