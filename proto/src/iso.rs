//! Reading a bundle ISO in user space, without mounting it.
//!
//! [`IsoBundle`] is a [`BundleSource`] over an ISO 9660 image file (or a CD-ROM block device),
//! for when the kernel cannot mount `iso9660` (the CI and development kernels have no such
//! driver) and for `cks-isobuilder verify x.iso`. [`read_volume_id`] reads just the volume label,
//! cheaply, for device discovery ("is this block device the `CDROM` bundle?").
//!
//! # What it reads
//!
//! The image is read with [`hadris-iso`](hadris_iso) (pinned to `=3.0.0-rc.2`), which parses the
//! volume descriptors, directory records, the SUSP/Rock Ridge entries (`NM` long names, `PX`
//! modes, `SL` symlinks, `CE` continuation areas, `CL`/`RE` relocated deep directories) and
//! multi-extent files. The mount picks the most capable tree: Rock Ridge, then Joliet, then the
//! primary tree.
//!
//! # Why Rock Ridge
//!
//! Bundle ISOs are written by xorriso with Rock Ridge and Joliet (contract 1 in
//! `ARCHITECTURE.md`). Only the Rock Ridge tree is faithful: it keeps the real names
//! (`docker/pause:3.10.tar`, names longer than 64 characters), the permission bits the manifest
//! records (`k8s/kubeadm` is `0755`), symlinks, and paths deeper than 8 levels or longer than
//! 240 characters, which Joliet drops or truncates. So modes are reported only when the image
//! has Rock Ridge; on an image without it [`SourceFile::mode`] is `None` and names come from
//! Joliet or the primary tree.
//!
//! # Limits
//!
//! * Only regular files are listed; directories, symlinks and device nodes are not. A symlink
//!   cannot be opened.
//! * Files of 4 GiB and more (ISO level 3, stored as several extents) report their whole size
//!   and read through; interleaved files and multi-volume sets are refused as unsupported.
//! * Names must be UTF-8 (a bundle's are ASCII); listing fails on any other name.
//! * A Rock Ridge name longer than 768 bytes is listed under its ISO 9660 identifier
//!   (a `hadris-iso` rule; Linux names stop at 255 bytes anyway).
//! * Reads are streamed in [`READ_CHUNK`]-sized positional reads; nothing is loaded whole. The
//!   image is shared behind a mutex, so readers of one [`IsoBundle`] take turns per chunk.
//!   Files can seek ([`BundleSource::open_seekable`]), so a reader skips what it does not need
//!   (the image archive members an upgrade already has) without reading it.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hadris_fs::sync::{File as FsFile, Volume};
use hadris_fs::{FileType, MountOptions, OpenOptions};
use hadris_iso::sync::IsoFs;
use hadris_iso::{CacheOptions, IsoId, Namespace};
use hadris_storage::host::FileDevice;

use crate::verify::{BundleSource, ReadSeek, SourceFile};

/// Size of one read from the image: a reader asks the image for this much at a time, whatever
/// the size of its caller's reads (1 MiB).
pub const READ_CHUNK: usize = 1 << 20;

/// ISO 9660 logical sector size, where the volume descriptors live.
const SECTOR: u64 = 2048;
/// The first volume descriptor is at sector 16.
const FIRST_DESCRIPTOR: u64 = 16;
/// Descriptors read before giving up on finding the primary one.
const MAX_DESCRIPTORS: u64 = 32;

type Fs = IsoFs<FileDevice>;

/// An ISO 9660 image read in user space, as a [`BundleSource`].
///
/// Cheap to share: it is `Send + Sync`, its readers are `Send + 'static` (see
/// [`IsoBundle::open_file`]), and it can be moved into a blocking thread.
pub struct IsoBundle {
    path: PathBuf,
    volume: Volume<Fs>,
    volume_id: String,
    rock_ridge: bool,
}

impl fmt::Debug for IsoBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsoBundle")
            .field("path", &self.path)
            .field("volume_id", &self.volume_id)
            .field("rock_ridge", &self.rock_ridge)
            .finish_non_exhaustive()
    }
}

/// An I/O error of this module, with the operation and the image path that failed.
///
/// Returned inside an [`io::Error`] (of the same [`io::ErrorKind`] as the cause), so callers
/// that only deal in `io::Error` keep working, and a `{:#}` chain reads e.g.
/// `cannot open ISO image /tmp/x.iso: ...`.
#[derive(Debug, thiserror::Error)]
#[error("cannot {operation} {}", path.display())]
pub struct IsoError {
    /// What was being done, e.g. `open ISO image`, `read docker/x.tar in ISO image`.
    pub operation: String,
    /// The image (file or block device).
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: io::Error,
}

impl IsoError {
    /// Wraps `source` as an `io::Error` of the same kind.
    fn wrap(operation: impl Into<String>, path: &Path, source: io::Error) -> io::Error {
        io::Error::new(
            source.kind(),
            IsoError {
                operation: operation.into(),
                path: path.to_path_buf(),
                source,
            },
        )
    }
}

impl IsoBundle {
    /// Opens the image at `path` (a file or a block device) and reads its volume descriptors.
    ///
    /// # Errors
    /// An [`IsoError`] inside an `io::Error`: `NotFound`/`PermissionDenied` from opening the
    /// file, `InvalidData` when it is not ISO 9660 or its descriptors are corrupt.
    pub fn open(path: &Path) -> io::Result<IsoBundle> {
        let wrap = |e| IsoError::wrap("open ISO image", path, e);
        let device = FileDevice::open(path).map_err(wrap)?;
        let fs = IsoFs::mount(device, MountOptions::new())
            .map_err(|e| wrap(e.into_error().into()))?
            // Directory sectors and records are re-read for every entry and every chunk of a
            // file; a small cache makes listing and reading cheaper. Payloads are never cached.
            .with_cache(CacheOptions::new().with_blocks(64).with_records(256));
        let rock_ridge = fs.namespace() == Namespace::RockRidge;
        let volume_id = trim_id(fs.info().id(IsoId::Volume));
        Ok(IsoBundle {
            path: path.to_path_buf(),
            volume: Volume::new(fs),
            volume_id,
            rock_ridge,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The volume identifier of the primary volume descriptor, trailing spaces removed
    /// (`CDROM` for bundle ISOs).
    pub fn volume_id(&self) -> String {
        self.volume_id.clone()
    }

    /// Whether the image has Rock Ridge, so names and modes are the real ones.
    pub fn has_rock_ridge(&self) -> bool {
        self.rock_ridge
    }

    /// Opens the regular file at `path` (relative, `/`-separated) for streaming.
    ///
    /// Unlike [`BundleSource::open`] the reader is a named type that is `Send + 'static`, so it
    /// can be handed to another thread.
    ///
    /// # Errors
    /// An [`IsoError`] inside an `io::Error` of kind `NotFound` when there is no such file,
    /// `InvalidInput` for a path with empty, `.` or `..` components, `IsADirectory` for a
    /// directory, `Other` for a symlink (never followed), and the read error's kind otherwise.
    pub fn open_file(&self, path: &str) -> io::Result<IsoFile> {
        let wrap = |e| IsoError::wrap(format!("open {path} in ISO image"), &self.path, e);
        check_relative(path).map_err(wrap)?;
        let file = self
            .volume
            .open(format!("/{path}"), OpenOptions::new().read())
            .map_err(|e| wrap(e.into()))?;
        let meta = file.metadata().map_err(|e| wrap(e.into()))?;
        if meta.file_type() != FileType::File {
            return Err(wrap(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a regular file but {:?}", meta.file_type()),
            )));
        }
        Ok(IsoFile {
            inner: BufReader::with_capacity(READ_CHUNK, Chunked(file)),
            size: meta.len(),
            path: path.to_string(),
            iso: self.path.clone(),
        })
    }
}

impl BundleSource for IsoBundle {
    fn describe(&self) -> String {
        format!("ISO {}", self.path.display())
    }

    fn list_files(&self) -> io::Result<Vec<SourceFile>> {
        let wrap = |e| IsoError::wrap("list the files of ISO image", &self.path, e);
        let mut out = Vec::new();
        for entry in self.volume.walk("/").map_err(|e| wrap(e.into()))? {
            let entry = entry.map_err(|e| wrap(e.into()))?;
            let meta = entry.entry().metadata();
            if meta.file_type() != FileType::File {
                continue;
            }
            let raw = entry.path().strip_prefix(b"/").unwrap_or(entry.path());
            let path = String::from_utf8(raw.to_vec()).map_err(|_| {
                wrap(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "file name {:?} is not UTF-8",
                        String::from_utf8_lossy(entry.path())
                    ),
                ))
            })?;
            out.push(SourceFile {
                path,
                size: meta.len(),
                mode: self.rock_ridge.then(|| meta.permissions().bits()),
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn open<'a>(&'a self, path: &str) -> io::Result<Box<dyn Read + 'a>> {
        Ok(Box::new(self.open_file(path)?))
    }

    fn open_seekable<'a>(&'a self, path: &str) -> io::Result<Box<dyn ReadSeek + 'a>> {
        Ok(Box::new(self.open_file(path)?))
    }
}

/// A file of an [`IsoBundle`] open for sequential reading.
///
/// Reads go to the image in [`READ_CHUNK`]-sized positional reads (larger caller buffers are
/// filled directly), so small reads are cheap and nothing is held in memory but one chunk.
pub struct IsoFile {
    inner: BufReader<Chunked>,
    size: u64,
    path: String,
    iso: PathBuf,
}

impl IsoFile {
    /// The file's size in bytes, as the directory records give it (all extents).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl fmt::Debug for IsoFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsoFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("iso", &self.iso)
            .finish_non_exhaustive()
    }
}

impl Read for IsoFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| IsoError::wrap(format!("read {} in ISO image", self.path), &self.iso, e))
    }
}

/// Seeking moves the file position without reading: a relative seek that stays inside the
/// chunk already read keeps it; any other drops it and the next read fetches a new chunk there.
impl Seek for IsoFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let wrap = |e| IsoError::wrap(format!("seek in {} in ISO image", self.path), &self.iso, e);
        match pos {
            SeekFrom::Current(delta) => {
                self.inner.seek_relative(delta).map_err(wrap)?;
                self.inner.stream_position().map_err(wrap)
            }
            other => self.inner.seek(other).map_err(wrap),
        }
    }
}

/// The `hadris-fs` file handle as a `std::io::Read`: one `read` of the image per call, which
/// stops at the end of an extent (a multi-extent file's reads are short there, which
/// `BufReader` and every `Read` user handle).
struct Chunked(FsFile<Fs>);

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.0.read(buf)?)
    }
}

impl Seek for Chunked {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        Seek::seek(&mut self.0, pos)
    }
}

/// Reads the volume identifier of the ISO 9660 image or device at `path` straight from its
/// primary volume descriptor (bytes 40..72 of the first descriptor of type 1, from sector 16),
/// trailing spaces removed.
///
/// Cheap (one or two 2 KiB reads) and needs nothing else of the image, so device discovery can
/// ask every block device "are you labelled `CDROM`?".
///
/// # Errors
/// An [`IsoError`] inside an `io::Error`: open and read errors as they are, `UnexpectedEof` for
/// a file too short to hold descriptors, and `InvalidData` when the sectors hold no ISO 9660
/// primary volume descriptor.
pub fn read_volume_id(path: &Path) -> io::Result<String> {
    let wrap = |e| IsoError::wrap("read the volume id of", path, e);
    let file = File::open(path).map_err(wrap)?;
    let mut sector = [0u8; SECTOR as usize];
    for index in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
        file.read_exact_at(&mut sector, index * SECTOR)
            .map_err(wrap)?;
        match volume_id_of_descriptor(&sector) {
            Descriptor::Primary(id) => return Ok(id),
            Descriptor::Other => {}
            Descriptor::Terminator | Descriptor::NotIso => break,
        }
    }
    Err(wrap(io::Error::new(
        io::ErrorKind::InvalidData,
        "no ISO 9660 primary volume descriptor",
    )))
}

/// What one volume descriptor sector is.
#[derive(Debug, PartialEq, Eq)]
enum Descriptor {
    /// The primary volume descriptor, with its volume identifier.
    Primary(String),
    /// A boot record or supplementary (Joliet) descriptor.
    Other,
    /// The set terminator.
    Terminator,
    /// No `CD001` signature.
    NotIso,
}

fn volume_id_of_descriptor(sector: &[u8; SECTOR as usize]) -> Descriptor {
    if &sector[1..6] != b"CD001" {
        return Descriptor::NotIso;
    }
    match sector[0] {
        1 => Descriptor::Primary(trim_id(&sector[40..72])),
        255 => Descriptor::Terminator,
        _ => Descriptor::Other,
    }
}

/// A descriptor identifier as text: trailing spaces (and NULs, which some writers pad with)
/// removed; bytes that are not UTF-8 replaced.
fn trim_id(raw: &[u8]) -> String {
    let end = raw
        .iter()
        .rposition(|b| *b != b' ' && *b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Refuses paths that are absolute or have empty, `.` or `..` components.
fn check_relative(path: &str) -> io::Result<()> {
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing path {path:?}: not a plain relative path"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(kind: u8, id: &[u8]) -> [u8; 2048] {
        let mut s = [0u8; 2048];
        s[0] = kind;
        s[1..6].copy_from_slice(b"CD001");
        s[6] = 1;
        s[40..72].fill(b' ');
        s[40..40 + id.len()].copy_from_slice(id);
        s
    }

    #[test]
    fn descriptor_kinds() {
        assert_eq!(
            volume_id_of_descriptor(&descriptor(1, b"CDROM")),
            Descriptor::Primary("CDROM".into())
        );
        assert_eq!(
            volume_id_of_descriptor(&descriptor(0, b"")),
            Descriptor::Other
        );
        assert_eq!(
            volume_id_of_descriptor(&descriptor(255, b"")),
            Descriptor::Terminator
        );
        assert_eq!(volume_id_of_descriptor(&[0u8; 2048]), Descriptor::NotIso);
    }

    #[test]
    fn ids_are_trimmed() {
        assert_eq!(trim_id(b"CDROM                           "), "CDROM");
        assert_eq!(trim_id(b"A B\0\0  "), "A B");
        assert_eq!(trim_id(b"     "), "");
    }

    #[test]
    fn volume_id_from_file_skips_boot_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.iso");
        let mut image = vec![0u8; 16 * 2048];
        image.extend_from_slice(&descriptor(0, b""));
        image.extend_from_slice(&descriptor(1, b"CDROM"));
        image.extend_from_slice(&descriptor(255, b""));
        std::fs::write(&path, &image).expect("write");
        assert_eq!(read_volume_id(&path).expect("volume id"), "CDROM");
    }

    #[test]
    fn volume_id_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short");
        std::fs::write(&short, b"tiny").expect("write");
        let err = read_volume_id(&short).expect_err("too short");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("short"), "{err}");

        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 40 * 2048]).expect("write");
        let err = read_volume_id(&zeros).expect_err("not iso");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let err = read_volume_id(&dir.path().join("absent")).expect_err("absent");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn relative_paths_only() {
        assert!(check_relative("k8s/kubeadm").is_ok());
        assert!(check_relative("docker/pause:3.10.tar").is_ok());
        for bad in ["/k8s", "k8s//x", "../x", "a/./b", "", "a/"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<IsoBundle>();
        fn check_send<T: Send + 'static>() {}
        check_send::<IsoFile>();
    }
}
