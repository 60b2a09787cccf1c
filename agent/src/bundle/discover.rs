//! Finding the bundle: a path given on the command line, or the block device whose ISO volume id
//! is `CDROM`.
//!
//! The device is looked up as CKS nodes do (`blkid -t LABEL=CDROM`), without blkid: first the udev
//! link `/dev/disk/by-label/CDROM`, then every block device in `/sys/class/block` whose ISO 9660
//! primary volume descriptor says `CDROM`. The CloudStack config drive (volume id `config-2`) is
//! never taken. CloudStack may attach the ISO after the VM boots, so [`find_bundle_device`] retries
//! with bounded exponential backoff and logs one line per wait.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, trace};

/// The volume id of CloudStack's config drive, which must never be mistaken for the bundle.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";
/// First wait between two scans.
pub const DISCOVERY_INITIAL_DELAY: Duration = Duration::from_secs(1);
/// Longest wait between two scans.
pub const DISCOVERY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Where a bundle is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleLocation {
    /// An unpacked bundle tree (a mounted CD-ROM, a build's staging directory).
    Directory(PathBuf),
    /// An ISO image file.
    IsoFile(PathBuf),
    /// A block device holding the ISO (`/dev/sr0`).
    Device(PathBuf),
}

/// The bundle could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The path given does not exist or cannot be examined.
    #[error("bundle path {path:?} cannot be used")]
    BundlePath {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path given is neither a directory, a file nor a block device.
    #[error("bundle path {path:?} is not a directory, an ISO file or a block device")]
    UnsupportedBundlePath {
        /// The path.
        path: PathBuf,
    },
    /// No device labelled as the bundle appeared in time.
    #[error(
        "no block device with volume id {label:?} appeared within {waited:?}; is the Kubernetes \
         version's ISO attached to this VM? (checked {by_label} and block devices in {class_dir})"
    )]
    NotFound {
        /// The label looked for.
        label: String,
        /// How long the agent waited.
        waited: Duration,
        /// The by-label link checked.
        by_label: String,
        /// The sysfs directory scanned.
        class_dir: String,
    },
}

/// Where and how to look for the bundle device.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Device nodes (`/dev`; a temp dir in tests).
    pub dev_dir: PathBuf,
    /// sysfs (`/sys`; a temp dir in tests).
    pub sys_dir: PathBuf,
    /// The volume id to find (`CDROM`).
    pub label: String,
    /// Give up after waiting this long in total.
    pub timeout: Duration,
    /// First wait.
    pub initial_delay: Duration,
    /// Longest wait.
    pub max_delay: Duration,
}

// === impl BundleLocation ===

impl BundleLocation {
    /// Classifies a path given by the operator.
    ///
    /// # Errors
    /// [`DiscoverError::BundlePath`] when it cannot be examined, and
    /// [`DiscoverError::UnsupportedBundlePath`] for sockets, FIFOs and the like.
    pub fn from_path(path: &Path) -> Result<BundleLocation, DiscoverError> {
        let meta = std::fs::metadata(path).map_err(|source| DiscoverError::BundlePath {
            path: path.to_path_buf(),
            source,
        })?;
        let kind = meta.file_type();
        if kind.is_dir() {
            Ok(BundleLocation::Directory(path.to_path_buf()))
        } else if kind.is_file() {
            Ok(BundleLocation::IsoFile(path.to_path_buf()))
        } else if kind.is_block_device() {
            Ok(BundleLocation::Device(path.to_path_buf()))
        } else {
            Err(DiscoverError::UnsupportedBundlePath {
                path: path.to_path_buf(),
            })
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            BundleLocation::Directory(p)
            | BundleLocation::IsoFile(p)
            | BundleLocation::Device(p) => p,
        }
    }

    /// The form `agent.proto`'s `BundleInfo.source` uses: `dir:…`, `file:…`, `device:…`.
    pub fn describe(&self) -> String {
        match self {
            BundleLocation::Directory(p) => format!("dir:{}", p.display()),
            BundleLocation::IsoFile(p) => format!("file:{}", p.display()),
            BundleLocation::Device(p) => format!("device:{}", p.display()),
        }
    }
}

// === impl Discovery ===

impl Discovery {
    /// Discovery with the default backoff.
    pub fn new(dev_dir: PathBuf, sys_dir: PathBuf, label: String, timeout: Duration) -> Self {
        Discovery {
            dev_dir,
            sys_dir,
            label,
            timeout,
            initial_delay: DISCOVERY_INITIAL_DELAY,
            max_delay: DISCOVERY_MAX_DELAY,
        }
    }

    /// Looks once: the by-label link, then every block device. Returns the device path.
    pub fn scan_once(&self) -> Option<PathBuf> {
        let link = self.by_label_link();
        if link.exists() {
            match std::fs::canonicalize(&link) {
                Ok(device) if self.has_label(&device) => return Some(device),
                Ok(device) => debug!(
                    link = %link.display(),
                    device = %device.display(),
                    "by-label link does not lead to an ISO with the bundle's volume id"
                ),
                Err(err) => debug!(link = %link.display(), %err, "cannot resolve by-label link"),
            }
        }
        for name in self.block_devices() {
            let device = self.dev_dir.join(&name);
            if self.has_label(&device) {
                return Some(device);
            }
        }
        None
    }

    /// Block device names from sysfs, CD-ROM drives (`sr*`) first, then the others by name;
    /// empty devices (size 0, e.g. a drive with no disc) and RAM disks are left out.
    fn block_devices(&self) -> Vec<String> {
        let class_dir = self.sys_dir.join("class/block");
        let Ok(entries) = std::fs::read_dir(&class_dir) else {
            debug!(dir = %class_dir.display(), "cannot list block devices");
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with("ram") && !name.starts_with("zram"))
            .filter(|name| {
                let size = std::fs::read_to_string(class_dir.join(name).join("size"));
                // Unknown size: look anyway; a read error just skips it below.
                size.map_or(true, |s| s.trim() != "0")
            })
            .collect();
        names.sort_by_key(|name| (!name.starts_with("sr"), name.clone()));
        names
    }

    /// Whether `device` holds an ISO 9660 volume with the bundle's volume id.
    fn has_label(&self, device: &Path) -> bool {
        match cks_proto::iso::read_volume_id(device) {
            Ok(id) if id == self.label => true,
            Ok(id) if id == CONFIG_DRIVE_LABEL => {
                debug!(device = %device.display(), "skipping the CloudStack config drive");
                false
            }
            Ok(id) => {
                trace!(device = %device.display(), volume_id = %id, "not the bundle");
                false
            }
            Err(err) => {
                trace!(device = %device.display(), %err, "not an ISO 9660 volume");
                false
            }
        }
    }

    fn by_label_link(&self) -> PathBuf {
        self.dev_dir.join("disk/by-label").join(&self.label)
    }
}

/// Looks for the bundle device until it appears or [`Discovery::timeout`] has been spent
/// waiting, sleeping with `sleep` (exponential: initial delay doubled up to the maximum).
///
/// # Errors
/// [`DiscoverError::NotFound`] after the timeout.
pub fn find_bundle_device(
    discovery: &Discovery,
    sleep: &mut dyn FnMut(Duration),
) -> Result<PathBuf, DiscoverError> {
    let mut waited = Duration::ZERO;
    let mut delay = discovery.initial_delay;
    let mut attempt = 1u32;
    loop {
        if let Some(device) = discovery.scan_once() {
            info!(device = %device.display(), label = %discovery.label, attempt, "found the bundle device");
            return Ok(device);
        }
        if waited >= discovery.timeout {
            return Err(DiscoverError::NotFound {
                label: discovery.label.clone(),
                waited,
                by_label: discovery.by_label_link().display().to_string(),
                class_dir: discovery.sys_dir.join("class/block").display().to_string(),
            });
        }
        let this_wait = delay.min(discovery.timeout - waited);
        info!(
            label = %discovery.label,
            attempt,
            retry_in_seconds = this_wait.as_secs_f64(),
            waited_seconds = waited.as_secs(),
            timeout_seconds = discovery.timeout.as_secs(),
            "bundle device not attached yet; waiting"
        );
        sleep(this_wait);
        waited += this_wait;
        delay = (delay * 2).min(discovery.max_delay);
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// A fake `/dev` + `/sys` with files standing in for block devices.
    struct FakeHost {
        dir: tempfile::TempDir,
    }

    impl FakeHost {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("dev/disk/by-label")).expect("mkdir");
            std::fs::create_dir_all(dir.path().join("sys/class/block")).expect("mkdir");
            FakeHost { dir }
        }

        fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }

        /// Adds block device `name` whose content is an ISO with `label` (or junk if `None`).
        fn add_device(&self, name: &str, label: Option<&str>) {
            let mut image = vec![0u8; 16 * 2048];
            if let Some(label) = label {
                let mut pvd = [0u8; 2048];
                pvd[0] = 1;
                pvd[1..6].copy_from_slice(b"CD001");
                pvd[40..72].fill(b' ');
                pvd[40..40 + label.len()].copy_from_slice(label.as_bytes());
                image.extend_from_slice(&pvd);
                let mut end = [0u8; 2048];
                end[0] = 255;
                end[1..6].copy_from_slice(b"CD001");
                image.extend_from_slice(&end);
            } else {
                image.extend_from_slice(&[0xAB; 4096]);
            }
            std::fs::write(self.dev().join(name), &image).expect("write device");
            let class = self.dir.path().join("sys/class/block").join(name);
            std::fs::create_dir_all(&class).expect("mkdir");
            std::fs::write(class.join("size"), format!("{}\n", image.len() / 512)).expect("size");
        }

        fn discovery(&self, timeout: Duration) -> Discovery {
            Discovery::new(
                self.dev(),
                self.dir.path().join("sys"),
                "CDROM".into(),
                timeout,
            )
        }
    }

    #[test]
    fn bundle_path_kinds() {
        let host = FakeHost::new();
        host.add_device("sr0", Some("CDROM"));
        assert_eq!(
            BundleLocation::from_path(&host.dev()).expect("dir"),
            BundleLocation::Directory(host.dev())
        );
        let file = host.dev().join("sr0");
        assert_eq!(
            BundleLocation::from_path(&file).expect("file"),
            BundleLocation::IsoFile(file.clone())
        );
        assert_eq!(
            BundleLocation::IsoFile(file).describe(),
            format!("file:{}/sr0", host.dev().display())
        );
        let err = BundleLocation::from_path(&host.dev().join("absent")).expect_err("absent");
        assert!(matches!(err, DiscoverError::BundlePath { .. }), "{err:?}");
        assert!(matches!(
            BundleLocation::from_path(Path::new("/dev/null")),
            Err(DiscoverError::UnsupportedBundlePath { .. })
        ));
    }

    #[test]
    fn config_drive_and_other_disks_are_never_taken() {
        let host = FakeHost::new();
        host.add_device("sr0", Some("config-2"));
        host.add_device("vda", None);
        host.add_device("sr1", Some("OTHER"));
        assert_eq!(host.discovery(Duration::from_secs(1)).scan_once(), None);
    }

    #[test]
    fn scan_finds_the_cdrom_device_among_others() {
        let host = FakeHost::new();
        host.add_device("sr0", Some("config-2"));
        host.add_device("vda", None);
        host.add_device("sr1", Some("CDROM"));
        assert_eq!(
            host.discovery(Duration::from_secs(1)).scan_once(),
            Some(host.dev().join("sr1"))
        );
    }

    #[test]
    fn empty_drives_are_skipped() {
        let host = FakeHost::new();
        host.add_device("sr0", Some("CDROM"));
        std::fs::write(host.dir.path().join("sys/class/block/sr0/size"), "0\n").expect("write");
        assert_eq!(host.discovery(Duration::from_secs(1)).scan_once(), None);
    }

    #[test]
    fn by_label_link_is_followed_and_checked() {
        let host = FakeHost::new();
        // Not in sysfs: only the udev link knows it.
        let mut image = vec![0u8; 16 * 2048];
        let mut pvd = [0u8; 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[40..45].copy_from_slice(b"CDROM");
        image.extend_from_slice(&pvd);
        std::fs::write(host.dev().join("sr7"), &image).expect("write");
        std::os::unix::fs::symlink("../../sr7", host.dev().join("disk/by-label/CDROM"))
            .expect("symlink");
        let found = host
            .discovery(Duration::from_secs(1))
            .scan_once()
            .expect("found");
        assert_eq!(
            found,
            std::fs::canonicalize(host.dev().join("sr7")).expect("canonical")
        );
    }

    #[test]
    fn waits_with_bounded_exponential_backoff_then_gives_up() {
        let host = FakeHost::new();
        let mut discovery = host.discovery(Duration::from_secs(100));
        discovery.max_delay = Duration::from_secs(30);
        let mut waits = Vec::new();
        let err = find_bundle_device(&discovery, &mut |d| waits.push(d.as_secs()))
            .expect_err("never appears");
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 30, 30, 9]);
        let message = err.to_string();
        assert!(message.contains("\"CDROM\""), "{message}");
        assert!(message.contains("attached"), "{message}");
    }

    #[test]
    fn device_attached_while_waiting_is_found() {
        let host = FakeHost::new();
        let discovery = host.discovery(Duration::from_secs(600));
        let sleeps = RefCell::new(0);
        let found = find_bundle_device(&discovery, &mut |_| {
            *sleeps.borrow_mut() += 1;
            if *sleeps.borrow() == 3 {
                host.add_device("sr0", Some("CDROM"));
            }
        })
        .expect("found after 3 waits");
        assert_eq!(found, host.dev().join("sr0"));
        assert_eq!(*sleeps.borrow(), 3);
    }
}
