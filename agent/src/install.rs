//! Installing a verified bundle's files on the node.
//!
//! | bundle file (kind) | goes to (under `--root`) |
//! |---|---|
//! | `k8s/{kubeadm,kubelet,kubectl}` | install dir (`/opt/bin`), mode 0755 |
//! | `cni/cni-plugins-<arch>.tgz` | extracted into the CNI dir (`/opt/cni/bin`) |
//! | `cri-tools/crictl-linux-<arch>.tar.gz` | extracted into the install dir |
//! | `kubelet.service` | `/etc/systemd/system/kubelet.service`, `/usr/bin` → install dir |
//! | `10-kubeadm.conf` | `/etc/systemd/system/kubelet.service.d/10-kubeadm.conf`, same rewrite |
//! | manifests (`network.yaml`, …) | `<data dir>/manifests/` |
//! | `etcd/…` | `<data dir>/etcd/` (kept for etcd nodes, not extracted) |
//! | `cks-manifest.json` | `<data dir>/cks-manifest.json` |
//!
//! The rewrite of `/usr/bin` is what CKS's `setup-kube-system` does with `sed`.
//!
//! # Guarantees
//!
//! * Call it only with a bundle that passed [`cks_proto::verify::verify_bundle`].
//! * Every file is first *staged*: written to a temp name in its destination directory, fsynced,
//!   while the bundle file it comes from is hashed again. Only when every file is staged and every
//!   hash still matches the manifest are the temp files renamed over their destinations (and the
//!   directories fsynced). A bundle that changes or fails to read mid-way leaves no installed file
//!   changed (temp files are removed; only missing destination directories may have been
//!   created). Each file is replaced atomically; the set of files is not (a crash between two
//!   renames leaves some files new, which the journaled rerun completes).
//! * Archive entries must be plain relative paths of regular files or directories: absolute
//!   paths, `..`, links and devices are refused before anything is installed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use cks_proto::ids::Sha256Digest;
use cks_proto::manifest::{BundleManifest, FileEntry, FileKind, MANIFEST_PATH};
use cks_proto::verify::{BundleSource, HashingReader};
use tempfile::NamedTempFile;
use tracing::{debug, info};

use crate::config::NodePaths;

/// Mode of installed executables.
pub const BINARY_MODE: u32 = 0o755;
/// Mode of installed configuration and manifests.
pub const CONFIG_MODE: u32 = 0o644;
/// Largest unit file rewritten in memory.
const MAX_UNIT_BYTES: u64 = 1024 * 1024;
/// The directory CKS's unit files name, replaced by the install dir.
const UNIT_BINARY_DIR: &str = "/usr/bin";

/// Installing failed; no file was replaced.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A bundle file could not be read.
    #[error("failed to read {path} from the bundle")]
    ReadBundle {
        /// Path in the bundle.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A bundle file is not what verification saw.
    #[error(
        "bundle file {path} changed after verification (sha256 {actual}, {size} bytes; \
         the manifest says {expected}); nothing was installed"
    )]
    ContentChanged {
        /// Path in the bundle.
        path: String,
        /// From the manifest.
        expected: Sha256Digest,
        /// Read now.
        actual: Sha256Digest,
        /// Bytes read now.
        size: u64,
    },
    /// A path in the manifest or an archive is not a plain relative path.
    #[error("refusing {entry:?} in {archive}: {reason}")]
    UnsafeEntry {
        /// The bundle file (archive or manifest).
        archive: String,
        /// The entry.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A destination directory could not be created.
    #[error("failed to create directory {path:?}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A temp file could not be written.
    #[error("failed to stage {dest:?}")]
    Stage {
        /// The destination.
        dest: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A staged file could not be renamed into place.
    #[error("failed to install {dest:?}")]
    Commit {
        /// The destination.
        dest: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What [`install_files`] installed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallReport {
    /// Host paths written, in order.
    pub installed: Vec<PathBuf>,
}

/// Installs every file of a verified bundle; see the module documentation.
///
/// # Errors
/// [`InstallError`]; the node's files are then unchanged.
pub fn install_files(
    bundle: &dyn BundleSource,
    manifest: &BundleManifest,
    paths: &NodePaths,
) -> Result<InstallReport, InstallError> {
    let mut staging = Staging::default();
    for entry in &manifest.files {
        if entry.kind == FileKind::ImageArchive {
            continue; // images.rs imports these.
        }
        stage_entry(bundle, entry, paths, &mut staging)?;
    }
    // The manifest itself, for later commands (which manifests exist, the versions).
    let mut manifest_bytes = Vec::new();
    bundle
        .open(MANIFEST_PATH)
        .and_then(|r| r.take(16 * 1024 * 1024).read_to_end(&mut manifest_bytes))
        .map_err(|source| InstallError::ReadBundle {
            path: MANIFEST_PATH.to_string(),
            source,
        })?;
    staging.stage_bytes(
        &paths.data_dir.join(MANIFEST_PATH),
        CONFIG_MODE,
        &manifest_bytes,
    )?;
    let installed = staging.commit()?;
    info!(
        files = installed.len(),
        "installed the bundle's binaries, CNI plugins, units and manifests"
    );
    Ok(InstallReport { installed })
}

fn stage_entry(
    bundle: &dyn BundleSource,
    entry: &FileEntry,
    paths: &NodePaths,
    staging: &mut Staging,
) -> Result<(), InstallError> {
    let read_error = |source| InstallError::ReadBundle {
        path: entry.path.clone(),
        source,
    };
    let relative = plain_relative(&entry.path).ok_or_else(|| InstallError::UnsafeEntry {
        archive: MANIFEST_PATH.to_string(),
        entry: entry.path.clone(),
        reason: "not a plain relative path",
    })?;
    let file_name = relative
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| relative.clone());
    let mut reader = HashingReader::new(bundle.open(&entry.path).map_err(read_error)?);
    match entry.kind {
        FileKind::KubernetesBinary => {
            let dest = paths.install_dir.join(&file_name);
            staging.stage_reader(&dest, BINARY_MODE, &mut reader)?;
        }
        FileKind::CniPlugins => {
            extract_tgz(&mut reader, &entry.path, &paths.cni_dir, staging)?;
        }
        FileKind::Crictl => {
            extract_tgz(&mut reader, &entry.path, &paths.install_dir, staging)?;
        }
        FileKind::KubeletService | FileKind::KubeadmDropIn => {
            let dest = if entry.kind == FileKind::KubeletService {
                paths.systemd_dir.join("kubelet.service")
            } else {
                paths.systemd_dir.join("kubelet.service.d").join(&file_name)
            };
            let mut text = String::new();
            (&mut reader)
                .take(MAX_UNIT_BYTES)
                .read_to_string(&mut text)
                .map_err(read_error)?;
            let install_dir = paths.install_dir_on_node.to_string_lossy();
            let rewritten = text.replace(UNIT_BINARY_DIR, &install_dir);
            staging.stage_bytes(&dest, CONFIG_MODE, rewritten.as_bytes())?;
        }
        FileKind::KubernetesManifest => {
            let dest = paths.data_dir.join("manifests").join(&relative);
            staging.stage_reader(&dest, CONFIG_MODE, &mut reader)?;
        }
        FileKind::Etcd => {
            let dest = paths.data_dir.join("etcd").join(&file_name);
            staging.stage_reader(&dest, CONFIG_MODE, &mut reader)?;
        }
        FileKind::ImageArchive => {}
    }
    io::copy(&mut reader, &mut io::sink()).map_err(read_error)?;
    let (size, actual) = reader.finish();
    if size != entry.size || actual != entry.sha256 {
        return Err(InstallError::ContentChanged {
            path: entry.path.clone(),
            expected: entry.sha256.clone(),
            actual,
            size,
        });
    }
    debug!(path = %entry.path, "staged");
    Ok(())
}

/// Extracts the regular files of a gzip-compressed tar into `dest_dir` (staged).
fn extract_tgz(
    reader: &mut dyn Read,
    archive: &str,
    dest_dir: &Path,
    staging: &mut Staging,
) -> Result<(), InstallError> {
    let read_error = |source| InstallError::ReadBundle {
        path: archive.to_string(),
        source,
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        let raw_path = entry.path().map_err(read_error)?.into_owned();
        let shown = raw_path.to_string_lossy().into_owned();
        let unsafe_entry = |reason| InstallError::UnsafeEntry {
            archive: archive.to_string(),
            entry: shown.clone(),
            reason,
        };
        let kind = entry.header().entry_type();
        let relative = plain_relative(&shown)
            .ok_or_else(|| unsafe_entry("absolute path or \"..\" component"))?;
        if kind.is_dir() {
            continue; // Created as needed for the files below it.
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(unsafe_entry(
                "not a regular file (links and devices are refused)",
            ));
        }
        if relative.as_os_str().is_empty() {
            continue;
        }
        // Keep the permission bits, never setuid/setgid/sticky.
        let mode = entry.header().mode().map_err(read_error)? & 0o777;
        staging.stage_reader(&dest_dir.join(&relative), mode, &mut entry)?;
    }
    Ok(())
}

/// `path` if it is relative with only normal components (`.` dropped), else `None`.
fn plain_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Temp files waiting to be renamed over their destinations.
#[derive(Default)]
struct Staging {
    files: Vec<(NamedTempFile, PathBuf)>,
}

impl Staging {
    fn temp_for(&mut self, dest: &Path) -> Result<NamedTempFile, InstallError> {
        let dir = dest.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|source| InstallError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        tempfile::Builder::new()
            .prefix(".cks-agent-")
            .tempfile_in(dir)
            .map_err(|source| InstallError::Stage {
                dest: dest.to_path_buf(),
                source,
            })
    }

    fn finish_temp(
        &mut self,
        temp: NamedTempFile,
        dest: &Path,
        mode: u32,
    ) -> Result<(), InstallError> {
        let stage_error = |source| InstallError::Stage {
            dest: dest.to_path_buf(),
            source,
        };
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(stage_error)?;
        temp.as_file().sync_all().map_err(stage_error)?;
        self.files.push((temp, dest.to_path_buf()));
        Ok(())
    }

    fn stage_reader(
        &mut self,
        dest: &Path,
        mode: u32,
        reader: &mut dyn Read,
    ) -> Result<(), InstallError> {
        let mut temp = self.temp_for(dest)?;
        io::copy(reader, &mut temp).map_err(|source| InstallError::Stage {
            dest: dest.to_path_buf(),
            source,
        })?;
        self.finish_temp(temp, dest, mode)
    }

    fn stage_bytes(&mut self, dest: &Path, mode: u32, bytes: &[u8]) -> Result<(), InstallError> {
        let mut temp = self.temp_for(dest)?;
        temp.write_all(bytes)
            .map_err(|source| InstallError::Stage {
                dest: dest.to_path_buf(),
                source,
            })?;
        self.finish_temp(temp, dest, mode)
    }

    /// Renames every staged file into place, then fsyncs the directories.
    fn commit(self) -> Result<Vec<PathBuf>, InstallError> {
        let mut dirs = BTreeSet::new();
        let mut installed = Vec::with_capacity(self.files.len());
        for (temp, dest) in self.files {
            temp.persist(&dest).map_err(|e| InstallError::Commit {
                dest: dest.clone(),
                source: e.error,
            })?;
            if let Some(dir) = dest.parent() {
                dirs.insert(dir.to_path_buf());
            }
            installed.push(dest);
        }
        for dir in dirs {
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| InstallError::Commit {
                    dest: dir.clone(),
                    source,
                })?;
        }
        Ok(installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_entry_type(tar::EntryType::Regular);
            // `set_path` refuses "..": write the raw name as a hostile archive would.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder.into_inner().expect("tar").finish().expect("gzip")
    }

    #[test]
    fn plain_relative_paths_only() {
        assert_eq!(plain_relative("./bridge"), Some(PathBuf::from("bridge")));
        assert_eq!(plain_relative("a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(plain_relative("../etc/passwd"), None);
        assert_eq!(plain_relative("a/../../b"), None);
        assert_eq!(plain_relative("/etc/passwd"), None);
    }

    #[test]
    fn archive_with_traversal_is_refused_before_anything_is_installed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("cni");
        let archive = tgz(&[
            ("./bridge", b"ok", 0o755),
            ("../../escaped", b"evil", 0o755),
        ]);
        let mut staging = Staging::default();
        let err = extract_tgz(&mut archive.as_slice(), "cni/x.tgz", &dest, &mut staging)
            .expect_err("traversal");
        assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err:?}");
        drop(staging);
        assert!(!dir.path().join("escaped").exists());
        // The staged temp file of "bridge" is gone with the staging; nothing was installed.
        assert_eq!(std::fs::read_dir(&dest).expect("dir").count(), 0);
    }

    #[test]
    fn archive_with_a_symlink_is_refused() {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, "bridge", "/etc/shadow")
            .expect("link");
        let archive = builder.into_inner().expect("tar").finish().expect("gzip");
        let dir = tempfile::tempdir().expect("tempdir");
        let err = extract_tgz(
            &mut archive.as_slice(),
            "cni/x.tgz",
            dir.path(),
            &mut Staging::default(),
        )
        .expect_err("symlink");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn archive_files_keep_mode_without_setuid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = tgz(&[("./bridge", b"bin", 0o4755), ("LICENSE", b"text", 0o644)]);
        let mut staging = Staging::default();
        extract_tgz(
            &mut archive.as_slice(),
            "cni/x.tgz",
            dir.path(),
            &mut staging,
        )
        .expect("extract");
        let installed = staging.commit().expect("commit");
        assert_eq!(installed.len(), 2);
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .expect("meta")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bridge"), 0o755);
        assert_eq!(mode("LICENSE"), 0o644);
        assert_eq!(
            std::fs::read(dir.path().join("bridge")).expect("read"),
            b"bin"
        );
    }
}
