//! Helpers for the isobuilder's end-to-end tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cks_fixtures::registry::RegistryAuth;
use cks_isobuilder::build::{self, BuildOptions, BuildOutput};
use cks_isobuilder::progress::Progress;
use cks_isobuilder::spec::ReleaseSpec;

pub use cks_fixtures::upstream::Upstream;

/// Starts an upstream with `auth` (panics with the fixture's error otherwise).
pub fn upstream(auth: RegistryAuth) -> Upstream {
    Upstream::start(auth).unwrap()
}

/// The upstream's spec for `arch`, parsed.
pub fn spec_for(up: &Upstream, arch: &str) -> ReleaseSpec {
    ReleaseSpec::parse(&up.spec_text(arch), Path::new(".")).unwrap()
}

pub fn options(out: &Path, cache: &Path) -> BuildOptions {
    BuildOptions {
        out_dir: out.to_path_buf(),
        cache_dir: cache.to_path_buf(),
        offline: false,
        jobs: 4,
        progress: Progress::hidden(),
    }
}

pub fn build(spec: &ReleaseSpec, options: &BuildOptions) -> Result<BuildOutput, build::BuildError> {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(build::build(spec, options))
}

/// The error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    cks_isobuilder::fetch::error_chain(e)
}

/// Files in `dir` (names), sorted; empty if the directory does not exist.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Copies one file out of an ISO (user-space reader).
pub fn extract(iso: &Path, path: &str, dest: &Path) {
    use cks_proto::verify::BundleSource;
    let bundle = cks_proto::iso::IsoBundle::open(iso).unwrap();
    let mut reader = bundle.open(path).unwrap();
    let mut out = std::fs::File::create(dest).unwrap();
    std::io::copy(&mut reader, &mut out).unwrap();
}

pub fn isobuilder_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cks-isobuilder"))
}
