//! Writing the ISO with xorriso, byte-reproducibly.
//!
//! Every file is mapped from where it already is (the cache), so no staging copy of the tree is
//! made. Reproducibility comes from fixing every date xorriso records (volume dates, the volume
//! "uuid", every file's Rock Ridge times) and every owner and mode; libisofs sorts directories
//! itself, so input order and inode numbers do not matter (see docs/platform notes).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cks_proto::ids::Sha256Digest;
use sha2::{Digest, Sha256};

/// The volume ID stock CKS nodes look for (`blkid -t LABEL=CDROM`).
pub const VOLUME_ID: &str = "CDROM";
/// The fixed time recorded for the volume and every file (2023-11-14 22:13:20 UTC).
const FIXED_EPOCH: &str = "=1700000000";
/// The fixed volume "uuid" (a date string in ISO 9660).
const FIXED_UUID: &str = "2023111422132000";

/// One file of the ISO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// Path inside the ISO, relative, `/`-separated.
    pub iso_path: String,
    /// Where the content is on disk.
    pub source: PathBuf,
    /// Permission bits.
    pub mode: u32,
}

/// xorriso failed.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Not installed.
    #[error("xorriso is not installed (apt-get install xorriso)")]
    NotInstalled(#[source] std::io::Error),
    /// The image could not be written.
    #[error("failed to write the image")]
    Write(#[source] io::Error),
    /// Ran and failed.
    #[error("xorriso failed with {status}: {stderr}")]
    Failed {
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it said.
        stderr: String,
    },
}

/// The xorriso arguments that write `entries` to `output`.
pub fn xorriso_args(entries: &[IsoEntry]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(Into::into));
    // Writing to stdout must be xorriso's very first argument.
    push(&[
        "-outdev",
        "-",
        "-no_rc",
        "-report_about",
        "SORRY",
        "-abort_on",
        "FAILURE",
    ]);
    push(&[
        "-volid",
        VOLUME_ID,
        "-joliet",
        "on",
        "-rockridge",
        "on",
        "-compliance",
        "iso_9660_level=3",
        "-volume_date",
        "uuid",
        FIXED_UUID,
        "-volume_date",
        "c",
        FIXED_EPOCH,
        "-volume_date",
        "m",
        FIXED_EPOCH,
        "-volume_date",
        "all_file_dates",
        FIXED_EPOCH,
        "-iso_nowtime",
        FIXED_EPOCH,
    ]);
    let mut sorted: Vec<&IsoEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.iso_path.cmp(&b.iso_path));
    for e in &sorted {
        args.push("-map".into());
        args.push(e.source.clone().into());
        args.push(format!("/{}", e.iso_path).into());
    }
    for part in [
        "-chown_r", "0", "/", "--", "-chgrp_r", "0", "/", "--", "-chmod_r", "0755", "/", "--",
    ] {
        args.push(part.into());
    }
    for e in &sorted {
        args.push("-chmod".into());
        args.push(format!("0{:o}", e.mode & 0o7777).into());
        args.push(format!("/{}", e.iso_path).into());
        args.push("--".into());
    }
    args.push("-commit".into());
    args
}

/// Writes the ISO to `output`, hashing it as xorriso streams it (no second read).
///
/// # Errors
/// [`IsoError`] when xorriso is missing or fails, or `output` cannot be written.
pub fn write_iso(entries: &[IsoEntry], output: &Path) -> Result<(Sha256Digest, u64), IsoError> {
    let mut child = Command::new("xorriso")
        .args(xorriso_args(entries))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(IsoError::NotInstalled)?;
    // Drain stderr beside the copy so that neither pipe can fill up and block xorriso.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    let copied = child
        .stdout
        .take()
        .ok_or_else(|| IsoError::Write(io::Error::other("xorriso has no stdout")))
        .and_then(|stdout| copy_hashing(stdout, output).map_err(IsoError::Write));
    let status = child.wait().map_err(IsoError::Write)?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(IsoError::Failed {
            status,
            stderr: stderr.trim().to_string(),
        });
    }
    copied
}

fn copy_hashing(mut from: impl Read, output: &Path) -> io::Result<(Sha256Digest, u64)> {
    let mut file = std::fs::File::create(output)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        size += n as u64;
    }
    file.sync_all()?;
    Ok((Sha256Digest::from_hasher(hasher), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_fix_label_dates_and_modes() {
        let entries = vec![
            IsoEntry {
                iso_path: "network.yaml".into(),
                source: "/c/b".into(),
                mode: 0o644,
            },
            IsoEntry {
                iso_path: "k8s/kubeadm".into(),
                source: "/c/a".into(),
                mode: 0o755,
            },
        ];
        let args: Vec<String> = xorriso_args(&entries)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-volid CDROM"));
        assert!(joined.contains("-volume_date all_file_dates =1700000000"));
        assert!(joined.contains("-map /c/a /k8s/kubeadm -map /c/b /network.yaml"));
        assert!(joined.contains("-chmod 0755 /k8s/kubeadm -- -chmod 0644 /network.yaml --"));
        assert_eq!(args.last().map(String::as_str), Some("-commit"));
    }
}
