//! Loop devices: attach an image file read-only, detach on drop.
//!
//! This is the agent's only `unsafe` code. The loop driver is driven by `ioctl(2)`, which `nix`
//! exposes only through its `ioctl_*!` macros, and those generate `unsafe fn`s (the kernel cannot
//! check the argument's type). The crates that wrap loop devices (`loopdev`, `loopdev-3`) generate
//! their bindings with bindgen at build time (libclang on every build machine) and do not detach
//! on drop, so the four ioctls are declared here instead. Each call passes either nothing, a file
//! descriptor we own for the duration of the call, or a pointer to a `repr(C)` struct laid out
//! as `struct loop_info64` in `<linux/loop.h>` that lives across the call.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use tracing::{debug, warn};

/// `LOOP_CTL_GET_FREE`: returns the number of a free loop device, creating one if needed.
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
/// `LOOP_SET_FD`: binds a file to the device (read-only when the file is open read-only).
const LOOP_SET_FD: u32 = 0x4C00;
/// `LOOP_CLR_FD`: unbinds it (deferred until the last user closes it, with autoclear).
const LOOP_CLR_FD: u32 = 0x4C01;
/// `LOOP_SET_STATUS64`: sets flags and the name shown by `losetup`.
const LOOP_SET_STATUS64: u32 = 0x4C04;
/// `LO_FLAGS_AUTOCLEAR`: the kernel detaches the device when its last user goes away, so a
/// crashed agent leaks no loop device once the mount is gone.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Attempts when another process takes the free device between our two ioctls.
const ATTACH_ATTEMPTS: usize = 8;

nix::ioctl_none_bad!(
    /// `ioctl(control, LOOP_CTL_GET_FREE)`.
    loop_ctl_get_free,
    LOOP_CTL_GET_FREE
);
nix::ioctl_write_int_bad!(
    /// `ioctl(loop, LOOP_SET_FD, backing_fd)`.
    loop_set_fd,
    LOOP_SET_FD
);
nix::ioctl_none_bad!(
    /// `ioctl(loop, LOOP_CLR_FD)`.
    loop_clr_fd,
    LOOP_CLR_FD
);
nix::ioctl_write_ptr_bad!(
    /// `ioctl(loop, LOOP_SET_STATUS64, &info)`.
    loop_set_status64,
    LOOP_SET_STATUS64,
    LoopInfo64
);

/// `struct loop_info64` from `<linux/loop.h>` (232 bytes).
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// Setting up a loop device failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The image could not be opened.
    #[error("failed to open image {path:?}")]
    OpenImage {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `/dev/loop-control` could not be opened (no loop driver, or not root).
    #[error("failed to open {path:?} (is the loop driver loaded, and is the agent root?)")]
    OpenControl {
        /// The control device.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("loop ioctl {operation} on {device:?} failed")]
    Ioctl {
        /// Which one.
        operation: &'static str,
        /// The device.
        device: PathBuf,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// A loop device node could not be opened.
    #[error("failed to open loop device {device:?}")]
    OpenDevice {
        /// The device.
        device: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A loop device bound read-only to an image; detached when dropped.
#[derive(Debug)]
pub struct LoopDevice {
    device: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Binds `image` read-only to a free loop device from `dev_dir` (`/dev`).
    ///
    /// # Errors
    /// [`LoopError`] naming the step that failed.
    pub fn attach_read_only(image: &Path, dev_dir: &Path) -> Result<LoopDevice, LoopError> {
        let backing = File::open(image).map_err(|source| LoopError::OpenImage {
            path: image.to_path_buf(),
            source,
        })?;
        let control_path = dev_dir.join("loop-control");
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&control_path)
            .map_err(|source| LoopError::OpenControl {
                path: control_path.clone(),
                source,
            })?;
        let mut last_busy = None;
        for _ in 0..ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument; `control` is open for the call.
            let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(|source| {
                LoopError::Ioctl {
                    operation: "LOOP_CTL_GET_FREE",
                    device: control_path.clone(),
                    source,
                }
            })?;
            let path = dev_dir.join(format!("loop{number}"));
            let device = File::open(&path).map_err(|source| LoopError::OpenDevice {
                device: path.clone(),
                source,
            })?;
            // SAFETY: LOOP_SET_FD takes a file descriptor by value; `backing` stays open for the
            // call (the kernel takes its own reference to the file).
            match unsafe { loop_set_fd(device.as_raw_fd(), backing.as_raw_fd()) } {
                Ok(_) => {}
                Err(Errno::EBUSY) => {
                    debug!(device = %path.display(), "loop device taken meanwhile; trying another");
                    last_busy = Some(path);
                    continue;
                }
                Err(source) => {
                    return Err(LoopError::Ioctl {
                        operation: "LOOP_SET_FD",
                        device: path,
                        source,
                    });
                }
            }
            let attached = LoopDevice { device, path };
            attached.set_autoclear(image)?;
            return Ok(attached);
        }
        Err(LoopError::Ioctl {
            operation: "LOOP_SET_FD",
            device: last_busy.unwrap_or(control_path),
            source: Errno::EBUSY,
        })
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn set_autoclear(&self, image: &Path) -> Result<(), LoopError> {
        let mut info = LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: LO_FLAGS_AUTOCLEAR,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        };
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: `info` is a live, fully initialised `struct loop_info64` for the whole call.
        unsafe { loop_set_status64(self.device.as_raw_fd(), &info) }.map_err(|source| {
            LoopError::Ioctl {
                operation: "LOOP_SET_STATUS64",
                device: self.path.clone(),
                source,
            }
        })?;
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        // SAFETY: LOOP_CLR_FD takes no argument; `self.device` is open.
        match unsafe { loop_clr_fd(self.device.as_raw_fd()) } {
            // ENXIO: already detached (autoclear after the unmount).
            Ok(_) | Err(Errno::ENXIO) => {}
            Err(err) => {
                warn!(device = %self.path.display(), %err, "failed to detach loop device")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_info64_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
    }
}
