//! A build, start to finish: plan the files → fetch them and the images (in parallel, into the
//! cache) → write the image archive(s) → write `cks-manifest.json` → write the ISO with xorriso
//! to a temporary name → hash it → rename it into place and write `<iso>.sha256` beside it.
//!
//! Nothing appears under the output name unless every input was verified and xorriso succeeded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::{
    BlobEntry, BundleManifest, FileEntry, FileKind, ImageEntry, SCHEMA_VERSION,
};
use indicatif::ProgressBar;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::archive::{self, ArchiveImage};
use crate::cache::{Cache, RecordKind};
use crate::fetch::http::{Fetched, HttpFetcher, parse_checksum};
use crate::fetch::registry::{Credentials, RegistryClient, ResolvedImage};
use crate::fetch::{FetchError, error_chain};
use crate::iso::{self, IsoEntry};
use crate::manifests;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::spec::{ImageLayout, ManifestOrigin, ReleaseSpec, defaults, expand};
use crate::templates;

/// How to build.
#[derive(Clone)]
pub struct BuildOptions {
    /// Where the ISO and its `.sha256` go.
    pub out_dir: PathBuf,
    /// The download cache.
    pub cache_dir: PathBuf,
    /// Use the cache only.
    pub offline: bool,
    /// Parallel downloads.
    pub jobs: usize,
    /// Progress display.
    pub progress: Progress,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The ISO.
    pub iso: PathBuf,
    /// Its `.sha256` file (`sha256sum` format).
    pub sha256_file: PathBuf,
    /// Its digest.
    pub sha256: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// What is in it.
    pub manifest: BundleManifest,
}

/// Why a build failed. No ISO was written.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The cache is unusable.
    #[error("failed to use cache directory {path:?}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An input could not be fetched or verified.
    #[error("failed to get {what}")]
    Fetch {
        /// The bundle path or image.
        what: String,
        /// Why.
        #[source]
        source: FetchError,
    },
    /// `--offline` and inputs are missing from the cache.
    #[error("--offline: {} input(s) are not in the cache (run once online to fill it):\n  - {}", missing.len(), missing.join("\n  - "))]
    Offline {
        /// Each missing input.
        missing: Vec<String>,
    },
    /// A manifest cannot be used.
    #[error("manifest {file} cannot be bundled: {reason}")]
    Manifest {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client cannot be built.
    #[error("failed to set up HTTP")]
    Http(#[source] reqwest::Error),
    /// Credentials unreadable.
    #[error("cannot read the password for registry {registry}: {reason}")]
    Credentials {
        /// The registry.
        registry: String,
        /// Why.
        reason: String,
    },
    /// Writing the image archive failed.
    #[error("failed to write image archive {path}")]
    Archive {
        /// The archive's bundle path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// xorriso failed.
    #[error("failed to write the ISO")]
    Iso(#[from] iso::IsoError),
    /// The output directory is unusable.
    #[error("failed to write {path:?}")]
    Output {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a file's content comes from.
#[derive(Debug, Clone)]
enum Origin {
    Url(String),
    Local(PathBuf),
    Generated(Vec<u8>),
}

/// How a file's content is checked.
#[derive(Debug, Clone)]
enum Checksum {
    Pinned(Sha256Digest),
    Published(String),
    /// Manifests and unit files: recorded, checked when pinned.
    TrustOnFirstUse,
}

/// What to do to a file's content before it goes on the ISO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    None,
    /// `s:/usr/bin:/opt/bin:g`, as CloudStack's script does to downloaded unit files.
    OptBin,
    /// Find images, pin `imagePullPolicy`.
    KubeManifest {
        bundle_images: bool,
    },
}

#[derive(Debug, Clone)]
struct FilePlan {
    iso_path: String,
    kind: FileKind,
    mode: u32,
    origin: Origin,
    checksum: Checksum,
    transform: Transform,
}

#[derive(Debug, Clone)]
struct FileDone {
    plan: FilePlan,
    digest: Sha256Digest,
    size: u64,
    images: Vec<String>,
}

fn plan_files(spec: &ReleaseSpec) -> Vec<FilePlan> {
    let arch = spec.arch;
    let pinned_or = |path: &str, published: String| match spec.checksums.get(path) {
        Some(d) => Checksum::Pinned(d.clone()),
        None => Checksum::Published(published),
    };
    let mut plans = Vec::new();
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let path = format!("k8s/{name}");
        let url = expand(&spec.sources.kubernetes, &spec.kubernetes, arch, name, "");
        let sum = expand(
            &spec.sources.kubernetes_checksum,
            &spec.kubernetes,
            arch,
            name,
            &url,
        );
        plans.push(FilePlan {
            checksum: pinned_or(&path, sum),
            iso_path: path,
            kind: FileKind::KubernetesBinary,
            mode: 0o755,
            origin: Origin::Url(url),
            transform: Transform::None,
        });
    }
    let mut tarball =
        |path: String, kind, template: &str, sum_template: &str, version, name: &str| {
            let url = expand(template, version, arch, name, "");
            let sum = expand(sum_template, version, arch, name, &url);
            plans.push(FilePlan {
                checksum: pinned_or(&path, sum),
                iso_path: path,
                kind,
                mode: 0o644,
                origin: Origin::Url(url),
                transform: Transform::None,
            });
        };
    tarball(
        format!("cni/cni-plugins-{arch}.tgz"),
        FileKind::CniPlugins,
        &spec.sources.cni_plugins,
        &spec.sources.cni_plugins_checksum,
        &spec.cni_plugins,
        "cni-plugins",
    );
    tarball(
        format!("cri-tools/crictl-linux-{arch}.tar.gz"),
        FileKind::Crictl,
        &spec.sources.crictl,
        &spec.sources.crictl_checksum,
        &spec.crictl,
        "crictl",
    );
    if let Some(etcd) = &spec.etcd {
        tarball(
            format!("etcd/etcd-linux-{arch}.tar.gz"),
            FileKind::Etcd,
            &spec.sources.etcd,
            &spec.sources.etcd_checksum,
            etcd,
            "etcd",
        );
    }
    for (path, kind, source, builtin) in [
        (
            "kubelet.service",
            FileKind::KubeletService,
            &spec.sources.kubelet_service,
            templates::KUBELET_SERVICE,
        ),
        (
            "10-kubeadm.conf",
            FileKind::KubeadmDropIn,
            &spec.sources.kubeadm_conf,
            templates::KUBEADM_DROP_IN,
        ),
    ] {
        let (origin, transform) = if source == defaults::BUILTIN {
            (
                Origin::Generated(builtin.as_bytes().to_vec()),
                Transform::None,
            )
        } else {
            let name = path.split('.').next().unwrap_or(path);
            (
                Origin::Url(expand(source, &spec.kubernetes, arch, name, "")),
                Transform::OptBin,
            )
        };
        plans.push(FilePlan {
            iso_path: path.to_string(),
            kind,
            mode: 0o644,
            checksum: spec
                .checksums
                .get(path)
                .map_or(Checksum::TrustOnFirstUse, |d| Checksum::Pinned(d.clone())),
            origin,
            transform,
        });
    }
    for m in &spec.manifests {
        plans.push(FilePlan {
            iso_path: m.file.clone(),
            kind: FileKind::KubernetesManifest,
            mode: 0o644,
            origin: match &m.origin {
                ManifestOrigin::Url(u) => Origin::Url(u.clone()),
                ManifestOrigin::Path(p) => Origin::Local(p.clone()),
            },
            checksum: m
                .sha256
                .clone()
                .or_else(|| spec.checksums.get(&m.file).cloned())
                .map_or(Checksum::TrustOnFirstUse, Checksum::Pinned),
            transform: Transform::KubeManifest {
                bundle_images: m.bundle_images,
            },
        });
    }
    plans
}

fn origin_label(origin: &Origin) -> String {
    match origin {
        Origin::Url(u) => u.clone(),
        Origin::Local(p) => format!("file://{}", p.display()),
        Origin::Generated(_) => "generated".to_string(),
    }
}

async fn fetch_file(
    plan: FilePlan,
    http: HttpFetcher,
    cache: Arc<Cache>,
    bar: ProgressBar,
) -> Result<FileDone, BuildError> {
    let fail = |source: FetchError| BuildError::Fetch {
        what: plan.iso_path.clone(),
        source,
    };
    let raw: Fetched = match &plan.origin {
        Origin::Generated(bytes) => {
            let sha256 = cache.put_bytes(bytes).map_err(|e| BuildError::Cache {
                path: cache.root().to_path_buf(),
                source: e,
            })?;
            Fetched {
                sha256,
                size: bytes.len() as u64,
            }
        }
        Origin::Local(path) => {
            let expected = match &plan.checksum {
                Checksum::Pinned(d) => Some(d),
                _ => None,
            };
            http.fetch_local(path, expected).await.map_err(fail)?
        }
        Origin::Url(url) => {
            let expected = match &plan.checksum {
                Checksum::Pinned(d) => Some(d.clone()),
                Checksum::Published(sum_url) => {
                    let text = http.fetch_text(sum_url).await.map_err(|e| match e {
                        FetchError::NotCached { .. } => fail(e),
                        other => fail(FetchError::NoChecksum {
                            url: url.clone(),
                            reason: format!(
                                "its published checksum {sum_url} is unavailable ({})",
                                error_chain(&other)
                            ),
                        }),
                    })?;
                    Some(parse_checksum(&text, url).map_err(fail)?)
                }
                Checksum::TrustOnFirstUse => None,
            };
            http.fetch(url, expected.as_ref(), &bar)
                .await
                .map_err(fail)?
        }
    };
    let mut images = Vec::new();
    let (digest, size) = match plan.transform {
        Transform::None => (raw.sha256, raw.size),
        Transform::OptBin | Transform::KubeManifest { .. } => {
            let bytes = cache
                .read_blob(&raw.sha256)
                .map_err(|e| BuildError::Cache {
                    path: cache.blob_path(&raw.sha256),
                    source: e,
                })?;
            let text = String::from_utf8(bytes).map_err(|_| BuildError::Manifest {
                file: plan.iso_path.clone(),
                reason: "it is not UTF-8 text".into(),
            })?;
            let out = if plan.transform == Transform::OptBin {
                text.replace("/usr/bin", "/opt/bin").into_bytes()
            } else {
                let scanned =
                    manifests::scan(&plan.iso_path, &text).map_err(|e| BuildError::Manifest {
                        file: plan.iso_path.clone(),
                        reason: error_chain(&e),
                    })?;
                if let Transform::KubeManifest {
                    bundle_images: true,
                } = plan.transform
                {
                    images = scanned.images;
                }
                scanned.rewritten
            };
            let digest = cache.put_bytes(&out).map_err(|e| BuildError::Cache {
                path: cache.root().to_path_buf(),
                source: e,
            })?;
            (digest, out.len() as u64)
        }
    };
    tracing::info!(file = %plan.iso_path, sha256 = %digest, size, "file ready");
    Ok(FileDone {
        plan,
        digest,
        size,
        images,
    })
}

fn read_credentials(spec: &ReleaseSpec) -> Result<BTreeMap<String, Credentials>, BuildError> {
    let mut out = BTreeMap::new();
    for (registry, c) in &spec.images.auth {
        let password = if let Some(var) = &c.password_env {
            std::env::var(var).map_err(|_| BuildError::Credentials {
                registry: registry.clone(),
                reason: format!("environment variable {var} is not set"),
            })?
        } else if let Some(path) = &c.password_file {
            std::fs::read_to_string(path)
                .map_err(|e| BuildError::Credentials {
                    registry: registry.clone(),
                    reason: format!("{}: {e}", path.display()),
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        } else {
            continue;
        };
        out.insert(
            registry.clone(),
            Credentials {
                username: c.username.clone(),
                password,
            },
        );
    }
    Ok(out)
}

/// The images a spec bundles, normalised, sorted, each once: kubeadm's set, `images.extra`,
/// and those found in manifests (`manifest_images`: file → references as written).
///
/// # Errors
/// [`BuildError::Manifest`] for a reference in a manifest that does not parse.
pub fn image_list(
    spec: &ReleaseSpec,
    manifest_images: &[(String, Vec<String>)],
) -> Result<Vec<ImageRef>, BuildError> {
    let mut refs = BTreeMap::new();
    let mut add = |r: ImageRef| {
        refs.insert(r.to_string(), r);
    };
    if spec.images.kubeadm {
        let list = crate::kubeadm::images_for(&spec.kubernetes, &spec.images.kubeadm_tags)
            .map_err(|e| BuildError::Manifest {
                file: "images.kubeadm".into(),
                reason: e.to_string(),
            })?;
        for i in list {
            add(ImageRef::parse(&i).map_err(|e| BuildError::Manifest {
                file: "images.kubeadm".into(),
                reason: e.to_string(),
            })?);
        }
    }
    for i in &spec.images.extra {
        add(ImageRef::parse(i).map_err(|e| BuildError::Manifest {
            file: "images.extra".into(),
            reason: e.to_string(),
        })?);
    }
    for (file, images) in manifest_images {
        for i in images {
            add(ImageRef::parse(i).map_err(|e| BuildError::Manifest {
                file: file.clone(),
                reason: e.to_string(),
            })?);
        }
    }
    Ok(refs.into_values().collect())
}

/// Runs a whole build.
///
/// # Errors
/// [`BuildError`]; in that case no file exists under the output name (a previous ISO there is
/// left untouched).
pub async fn build(spec: &ReleaseSpec, options: &BuildOptions) -> Result<BuildOutput, BuildError> {
    let span = tracing::info_span!("build", name = %spec.name, arch = %spec.arch);
    let _guard = span.enter();
    let cache = Arc::new(
        Cache::open(&options.cache_dir).map_err(|source| BuildError::Cache {
            path: options.cache_dir.clone(),
            source,
        })?,
    );
    let client = reqwest::Client::builder()
        .user_agent(concat!("cks-isobuilder/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(BuildError::Http)?;
    let http = HttpFetcher::new(client.clone(), cache.clone(), options.offline);
    let registry = RegistryClient::new(
        client,
        cache.clone(),
        spec.images.mirrors.clone(),
        read_credentials(spec)?,
        options.offline,
    );
    let limit = Arc::new(Semaphore::new(options.jobs.max(1)));
    let bar = options.progress.bytes("download");
    let mut missing = Vec::new();

    // 1. Files.
    let fetched = for_each_limited(&limit, plan_files(spec), |plan| {
        fetch_file(plan, http.clone(), cache.clone(), bar.clone())
    })
    .await;
    let mut files = Vec::new();
    for result in fetched {
        match result {
            Ok(done) => files.push(done),
            Err(BuildError::Fetch {
                what,
                source: FetchError::NotCached { what: url },
            }) => missing.push(format!("{what}: {url}")),
            Err(e) => return Err(e),
        }
    }
    files.sort_by(|a, b| a.plan.iso_path.cmp(&b.plan.iso_path));

    // 2. Images: resolve each to its platform manifest.
    let manifest_images: Vec<(String, Vec<String>)> = files
        .iter()
        .filter(|f| !f.images.is_empty())
        .map(|f| (f.plan.iso_path.clone(), f.images.clone()))
        .collect();
    let refs = image_list(spec, &manifest_images)?;
    let arch = spec.arch;
    let outcomes = for_each_limited(&limit, refs, |image| {
        let registry = registry.clone();
        async move {
            let result = registry.resolve(&image, arch).await;
            (image, result)
        }
    })
    .await;
    let mut resolved: Vec<(ImageRef, ResolvedImage)> = Vec::new();
    for (image, result) in outcomes {
        if let Some(r) = image_outcome(&image, result, &mut missing)? {
            resolved.push((image, r));
        }
    }
    resolved.sort_by(|a, b| a.1.reference.cmp(&b.1.reference));

    // 3. Blobs, each once even when many images share it.
    let mut blobs: BTreeMap<String, (ImageRef, cks_proto::oci::Descriptor)> = BTreeMap::new();
    for (image, r) in &resolved {
        for d in std::iter::once(&r.config).chain(r.layers.iter()) {
            blobs
                .entry(d.digest.clone())
                .or_insert_with(|| (image.clone(), d.clone()));
        }
    }
    let outcomes = for_each_limited(&limit, blobs.into_values(), |(image, descriptor)| {
        let (registry, bar) = (registry.clone(), bar.clone());
        async move {
            let result = registry.fetch_blob(&image, &descriptor, &bar).await;
            (image, result)
        }
    })
    .await;
    for (image, result) in outcomes {
        image_outcome(&image, result, &mut missing)?;
    }
    bar.finish_and_clear();
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(BuildError::Offline { missing });
    }

    // 4. Image archives.
    let spinner = options.progress.spinner("archive");
    let archive_images: Vec<(ImageRef, ArchiveImage)> = resolved
        .iter()
        .map(|(image, r)| {
            let blobs = std::iter::once(&r.config)
                .chain(r.layers.iter())
                .map(|d| d.digest.parse::<Sha256Digest>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| BuildError::Manifest {
                    file: format!("image {image}"),
                    reason: "a descriptor has a non-sha256 digest".into(),
                })?;
            Ok((
                image.clone(),
                ArchiveImage {
                    reference: r.reference.clone(),
                    tag: image.tag().map(str::to_string),
                    manifest_digest: r.manifest_digest.clone(),
                    media_type: r.media_type.clone(),
                    manifest_size: r.manifest_size,
                    platform: r.platform.clone(),
                    blobs,
                },
            ))
        })
        .collect::<Result<_, BuildError>>()?;
    let groups: Vec<(String, Vec<ArchiveImage>)> = match spec.images.layout {
        _ if archive_images.is_empty() => Vec::new(),
        ImageLayout::Shared => vec![(
            "docker/images.tar".to_string(),
            archive_images.iter().map(|(_, a)| a.clone()).collect(),
        )],
        ImageLayout::PerImage => {
            let all: Vec<ImageRef> = archive_images.iter().map(|(r, _)| r.clone()).collect();
            archive_images
                .iter()
                .map(|(r, a)| (archive::per_image_file_name(r, &all), vec![a.clone()]))
                .collect()
        }
    };
    let mut archive_files = Vec::new();
    for (path, images) in &groups {
        spinner.set_message(path.clone());
        let (digest, size) = build_archive(cache.clone(), images.clone(), path).await?;
        archive_files.push((path.clone(), digest, size, images.clone()));
    }
    spinner.finish_and_clear();

    // 5. The manifest.
    let mut entries: Vec<FileEntry> = files
        .iter()
        .map(|f| FileEntry {
            path: f.plan.iso_path.clone(),
            size: f.size,
            sha256: f.digest.clone(),
            mode: f.plan.mode,
            kind: f.plan.kind,
            source: origin_label(&f.plan.origin),
        })
        .collect();
    let mut image_entries = Vec::new();
    for (path, digest, size, images) in &archive_files {
        entries.push(FileEntry {
            path: path.clone(),
            size: *size,
            sha256: digest.clone(),
            mode: 0o644,
            kind: FileKind::ImageArchive,
            source: "generated".into(),
        });
        for i in images {
            image_entries.push(ImageEntry {
                reference: i.reference.clone(),
                archive: path.clone(),
                manifest_digest: i.manifest_digest.clone(),
                media_type: i.media_type.clone(),
                platform: i.platform.clone(),
                blobs: i.blobs.clone(),
            });
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    image_entries.sort_by(|a, b| a.reference.cmp(&b.reference));
    let mut blob_entries = BTreeMap::new();
    for (_, _, _, images) in &archive_files {
        for digest in archive::archive_blobs(images) {
            let size = cache
                .blob_size(&digest)
                .map_err(|source| BuildError::Cache {
                    path: cache.blob_path(&digest),
                    source,
                })?;
            blob_entries.insert(digest.clone(), BlobEntry { digest, size });
        }
    }
    let network_images = files
        .iter()
        .find(|f| f.plan.iso_path == "network.yaml")
        .map(|f| f.images.clone())
        .unwrap_or_default();
    let manifest = BundleManifest {
        schema_version: SCHEMA_VERSION,
        name: spec.name.clone(),
        builder: concat!("cks-isobuilder ", env!("CARGO_PKG_VERSION")).to_string(),
        kubernetes_version: spec.kubernetes.clone(),
        arch: spec.arch,
        cni: spec
            .cni
            .clone()
            .unwrap_or_else(|| manifests::guess_cni(&network_images)),
        cni_plugins_version: spec.cni_plugins.clone(),
        crictl_version: spec.crictl.clone(),
        etcd_version: spec.etcd.clone(),
        files: entries,
        images: image_entries,
        blobs: blob_entries.into_values().collect(),
    };
    let manifest_digest =
        cache
            .put_bytes(&manifest.to_json())
            .map_err(|source| BuildError::Cache {
                path: options.cache_dir.clone(),
                source,
            })?;

    // 6. The ISO.
    let mut iso_entries: Vec<IsoEntry> = manifest
        .files
        .iter()
        .map(|f| IsoEntry {
            iso_path: f.path.clone(),
            source: cache.blob_path(&f.sha256),
            mode: f.mode,
        })
        .collect();
    iso_entries.push(IsoEntry {
        iso_path: cks_proto::manifest::MANIFEST_PATH.into(),
        source: cache.blob_path(&manifest_digest),
        mode: 0o644,
    });
    std::fs::create_dir_all(&options.out_dir).map_err(|source| BuildError::Output {
        path: options.out_dir.clone(),
        source,
    })?;
    let file_name = spec.iso_file_name();
    let final_path = options.out_dir.join(&file_name);
    let tmp_path = options
        .out_dir
        .join(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp_path);
    let spinner = options.progress.spinner("iso");
    spinner.set_message(file_name.clone());
    let write = {
        let tmp_path = tmp_path.clone();
        tokio::task::spawn_blocking(move || iso::write_iso(&iso_entries, &tmp_path))
    };
    let written = write
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let (sha256, size) = match written {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e.into());
        }
    };
    spinner.finish_and_clear();
    let output_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Output { path, source }
    };
    std::fs::rename(&tmp_path, &final_path).map_err(output_error(&final_path))?;
    let sha256_file = options.out_dir.join(format!("{file_name}.sha256"));
    let sha_tmp = options.out_dir.join(format!(".{file_name}.sha256.tmp"));
    crate::cache::write_file(
        &sha_tmp,
        format!("{}  {file_name}\n", sha256.hex()).as_bytes(),
    )
    .map_err(output_error(&sha_tmp))?;
    std::fs::rename(&sha_tmp, &sha256_file).map_err(output_error(&sha256_file))?;
    tracing::info!(iso = %final_path.display(), sha256 = %sha256, size, "ISO written");
    Ok(BuildOutput {
        iso: final_path,
        sha256_file,
        sha256,
        size,
        manifest,
    })
}

/// Runs `task` on every item, at most `limit` at a time; returns the outputs in completion
/// order. A panicking task panics the caller.
async fn for_each_limited<I, T, F, Fut>(limit: &Arc<Semaphore>, items: I, task: F) -> Vec<T>
where
    I: IntoIterator,
    F: Fn(I::Item) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut tasks = JoinSet::new();
    for item in items {
        let (limit, work) = (limit.clone(), task(item));
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            work.await
        });
    }
    let mut outputs = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        outputs.push(joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    outputs
}

/// Sorts one image step's result: the value, a missing input noted for `--offline`, or the
/// build's error naming the image.
fn image_outcome<T>(
    image: &ImageRef,
    result: Result<T, FetchError>,
    missing: &mut Vec<String>,
) -> Result<Option<T>, BuildError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(FetchError::NotCached { what }) => {
            missing.push(what);
            Ok(None)
        }
        Err(source) => Err(BuildError::Fetch {
            what: format!("image {image}"),
            source,
        }),
    }
}

/// Builds (or reuses from the cache) the archive of `images`; its content is fully determined by
/// its `index.json`, which is therefore its cache key.
async fn build_archive(
    cache: Arc<Cache>,
    images: Vec<ArchiveImage>,
    path: &str,
) -> Result<(Sha256Digest, u64), BuildError> {
    let key = Sha256Digest::of(&archive::index_json(&images))
        .hex()
        .to_string();
    if let Some(rec) = cache.record::<crate::cache::UrlRecord>(RecordKind::Archive, &key)
        && cache.has_blob(&rec.sha256, Some(rec.size))
    {
        return Ok((rec.sha256, rec.size));
    }
    let err_path = path.to_string();
    let task = tokio::task::spawn_blocking(move || -> std::io::Result<(Sha256Digest, u64)> {
        let tmp = cache.temp_path("archive");
        let file = std::fs::File::create(&tmp)?;
        let mut writer = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
        archive::write_archive(&cache, &images, &mut writer)?;
        let (digest, size, inner) = writer.finish();
        inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        cache.commit(&tmp, &digest)?;
        cache.put_record(
            RecordKind::Archive,
            &key,
            &crate::cache::UrlRecord {
                url: format!("archive:{key}"),
                sha256: digest.clone(),
                size,
            },
        )?;
        Ok((digest, size))
    });
    task.await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(|source| BuildError::Archive {
            path: err_path,
            source,
        })
}

/// Hashes what is written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: std::io::Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        use sha2::Digest;
        HashingWriter {
            inner,
            hasher: sha2::Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (Sha256Digest, u64, W) {
        (
            Sha256Digest::from_hasher(self.hasher),
            self.size,
            self.inner,
        )
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The images a build of `spec` would bundle, fetching only the manifests (a dry run).
///
/// # Errors
/// [`BuildError`] when a manifest cannot be fetched or parsed.
pub async fn list_images(
    spec: &ReleaseSpec,
    cache_dir: &Path,
    offline: bool,
) -> Result<Vec<ImageRef>, BuildError> {
    let cache = Arc::new(Cache::open(cache_dir).map_err(|source| BuildError::Cache {
        path: cache_dir.to_path_buf(),
        source,
    })?);
    let http = HttpFetcher::new(reqwest::Client::new(), cache.clone(), offline);
    let mut manifest_images = Vec::new();
    for plan in plan_files(spec) {
        if let Transform::KubeManifest { .. } = plan.transform {
            let done = fetch_file(plan, http.clone(), cache.clone(), ProgressBar::hidden()).await?;
            manifest_images.push((done.plan.iso_path, done.images));
        }
    }
    image_list(spec, &manifest_images)
}
