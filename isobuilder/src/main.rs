//! The `cks-isobuilder` command line. Logic lives in the library; this parses arguments, sets up
//! logging and progress, and maps results to exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use cks_isobuilder::build::{self, BuildOptions};
use cks_isobuilder::cache::Cache;
use cks_isobuilder::inspect;
use cks_isobuilder::progress::Progress;
use cks_isobuilder::spec::{CksScriptArgs, ReleaseSpec, SpecError};
use clap::{Parser, Subcommand};

/// Exit code for bad usage (as sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;
/// Exit code when the build, verification or inspection failed.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(
    name = "cks-isobuilder",
    version,
    about = "Build verified, reproducible Kubernetes binaries ISOs for CloudStack's Kubernetes Service",
    long_about = "Build verified, reproducible Kubernetes binaries ISOs for CloudStack's Kubernetes Service (CKS).\n\n\
        The ISO keeps the CKS layout (volume label CDROM, k8s/, cni/, cri-tools/, docker/, manifests) so stock \
        CloudStack nodes use it unchanged, and adds cks-manifest.json with the digest of every file and image.\n\n\
        Exit codes: 0 success, 1 build/verify failure, 64 usage error.",
    after_help = "Register the result with: addKubernetesSupportedVersion url=<http url of the ISO> checksum={SHA-256}<hex from the .sha256 file> semanticversion=<version>"
)]
struct Cli {
    /// Log filter (e.g. info, debug, cks_isobuilder=trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "info", env = "CKS_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the ISO described by a release spec (TOML; see README.md).
    ///
    /// Writes DIR/<name>-<x86_64|aarch64>.iso and <iso>.sha256 beside it, both by atomic rename.
    Build {
        /// The release spec.
        spec: PathBuf,
        #[command(flatten)]
        common: BuildArgs,
    },
    /// Verify an ISO: volume label, manifest, every file and every image blob re-hashed.
    ///
    /// Exits 0 only if everything holds; otherwise names the first thing that does not.
    Verify {
        /// The ISO file.
        iso: PathBuf,
    },
    /// Show what an ISO holds: versions, arch, files, images, sizes, bytes saved by dedup.
    Inspect {
        /// The ISO file.
        iso: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List the images a spec would bundle (a dry run: fetches only the manifests).
    Images {
        /// The release spec.
        spec: PathBuf,
        /// Download cache directory.
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Use only the cache.
        #[arg(long)]
        offline: bool,
    },
    /// Drop-in for CloudStack's create-kubernetes-binaries-iso.sh, same argument order.
    ///
    /// Builds with upstream sources and kubeadm's image set plus the images of the two manifests.
    #[command(name = "cks")]
    Cks {
        /// Directory the ISO is written to.
        output_path: PathBuf,
        /// Kubernetes version, without "v" (e.g. 1.33.1).
        kubernetes_version: String,
        /// containernetworking/plugins version (e.g. 1.6.2).
        cni_version: String,
        /// cri-tools version (e.g. 1.33.0).
        crictl_version: String,
        /// URL of the CNI manifest (network.yaml).
        network_yaml_url: String,
        /// URL of the dashboard manifest (dashboard.yaml).
        dashboard_yaml_url: String,
        /// ISO base name (default setup-v<version>).
        build_name: Option<String>,
        /// x86_64/amd64 (default) or aarch64/arm64.
        arch: Option<String>,
        /// etcd version, for dedicated etcd nodes.
        etcd_version: Option<String>,
        #[command(flatten)]
        common: CksArgs,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Output directory.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    #[command(flatten)]
    cks: CksArgs,
}

#[derive(clap::Args)]
struct CksArgs {
    /// Download cache directory [default: $XDG_CACHE_HOME/cks-isobuilder or ~/.cache/cks-isobuilder].
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Build from the cache alone; lists everything that is missing.
    #[arg(long)]
    offline: bool,
    /// Parallel downloads.
    #[arg(long, short = 'j', value_name = "N", default_value_t = 4)]
    jobs: usize,
    /// Print the result as JSON (no progress bars).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cks_isobuilder::fetch::error_chain(e.as_ref()));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Build { spec, common } => {
            let Some(spec) = valid_spec(ReleaseSpec::load(&spec)) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            run_build(&spec, common.out, &common.cks)
        }
        Command::Cks {
            output_path,
            kubernetes_version,
            cni_version,
            crictl_version,
            network_yaml_url,
            dashboard_yaml_url,
            build_name,
            arch,
            etcd_version,
            common,
        } => {
            let args = CksScriptArgs {
                kubernetes: kubernetes_version,
                cni_plugins: cni_version,
                crictl: crictl_version,
                network_url: network_yaml_url,
                dashboard_url: dashboard_yaml_url,
                name: build_name,
                arch,
                etcd: etcd_version,
            };
            let Some(spec) = valid_spec(ReleaseSpec::from_cks_script(&args)) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            run_build(&spec, output_path, &common)
        }
        Command::Verify { iso } => {
            let size = std::fs::metadata(&iso).map(|m| m.len()).unwrap_or(0);
            let progress = Progress::new(std::io::stderr().is_terminal());
            let bar = progress.bytes("verify");
            bar.set_length(size);
            let on_bytes = |n: u64| bar.inc(n);
            match inspect::verify_iso(&iso, Some(&on_bytes)) {
                Ok(v) => {
                    bar.finish_and_clear();
                    println!(
                        "OK {}: {} files, {} images, {} blobs, {} hashed",
                        iso.display(),
                        v.manifest.files.len(),
                        v.manifest.images.len(),
                        v.manifest.blobs.len(),
                        inspect::human_bytes(v.bytes_checked)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    bar.finish_and_clear();
                    eprintln!(
                        "FAILED {}: {}",
                        iso.display(),
                        cks_isobuilder::fetch::error_chain(&e)
                    );
                    Ok(ExitCode::from(EXIT_FAILURE))
                }
            }
        }
        Command::Inspect { iso, json } => {
            let report = inspect::inspect(&iso)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", inspect::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Images {
            spec,
            cache,
            offline,
        } => {
            let Some(spec) = valid_spec(ReleaseSpec::load(&spec)) else {
                return Ok(ExitCode::from(EXIT_USAGE));
            };
            let cache = cache.unwrap_or_else(Cache::default_dir);
            let images = runtime()?.block_on(build::list_images(&spec, &cache, offline))?;
            for image in images {
                println!("{image}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The spec, or `None` after printing why it is invalid (a usage error).
fn valid_spec(result: Result<ReleaseSpec, SpecError>) -> Option<ReleaseSpec> {
    result
        .map_err(|e| eprintln!("error: {}", cks_isobuilder::fetch::error_chain(&e)))
        .ok()
}

fn run_build(spec: &ReleaseSpec, out: PathBuf, args: &CksArgs) -> anyhow::Result<ExitCode> {
    let options = BuildOptions {
        out_dir: out,
        cache_dir: args.cache.clone().unwrap_or_else(Cache::default_dir),
        offline: args.offline,
        jobs: args.jobs,
        progress: Progress::new(!args.json && std::io::stderr().is_terminal()),
    };
    let output = runtime()?.block_on(build::build(spec, &options))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "iso": output.iso,
                "sha256_file": output.sha256_file,
                "sha256": output.sha256.hex(),
                "size": output.size,
                "name": output.manifest.name,
                "kubernetes_version": output.manifest.kubernetes_version,
                "arch": output.manifest.arch,
                "files": output.manifest.files.len(),
                "images": output.manifest.images.len(),
            }))?
        );
    } else {
        println!("{}", output.iso.display());
        println!("{}", output.sha256_file.display());
        println!("checksum={{SHA-256}}{}", output.sha256.hex());
    }
    Ok(ExitCode::SUCCESS)
}
