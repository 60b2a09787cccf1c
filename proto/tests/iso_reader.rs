//! `cks_proto::iso`: reading ISOs written by xorriso with the project's reproducible recipe.
//!
//! Needs `xorriso` (`apt-get install -y xorriso`). Three tests are `#[ignore]`d: two slow ones
//! (a 200 MB throughput measurement, a 5 GiB multi-extent file) and one that needs root (a loop
//! device). Run them with
//! `cargo test --release -p cks-proto --test iso_reader -- --ignored --nocapture`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use cks_proto::ids::{Arch, KubeVersion, Sha256Digest};
use cks_proto::iso::{IsoBundle, IsoError, read_volume_id};
use cks_proto::manifest::{BundleManifest, FileEntry, FileKind, MANIFEST_PATH, SCHEMA_VERSION};
use cks_proto::verify::{
    BundleSource, DirBundle, SourceFile, VerifyError, VerifyOptions, verify_bundle,
};

/// Builds `out` from `dir` with the project's native, reproducible xorriso recipe (level 3,
/// Rock Ridge, Joliet, fixed dates, owners 0, modes normalised, `k8s/kubeadm` 0755 when present).
fn make_iso(dir: &Path, out: &Path, extra: &[&str]) {
    let mut cmd = Command::new("xorriso");
    cmd.args(["-no_rc", "-report_about", "SORRY", "-outdev"])
        .arg(out)
        .args(["-volid", "CDROM", "-joliet", "on"])
        .args(["-compliance", "iso_9660_level=3"])
        .args(extra)
        .args([
            "-volume_date",
            "uuid",
            "2023111422132000",
            "-volume_date",
            "c",
            "=1700000000",
            "-volume_date",
            "m",
            "=1700000000",
            "-volume_date",
            "all_file_dates",
            "=1700000000",
            "-iso_nowtime",
            "=1700000000",
            "-map",
        ])
        .arg(dir)
        .args(["/", "-chown_r", "0", "/", "--", "-chgrp_r", "0", "/", "--"])
        .args(["-chmod_r", "a+r,u+w,go-w", "/", "--"]);
    if dir.join("k8s/kubeadm").exists() {
        cmd.args(["-chmod", "0755", "/k8s/kubeadm", "--"]);
    }
    cmd.arg("-commit");
    let output = cmd
        .output()
        .expect("running xorriso (apt-get install -y xorriso)");
    assert!(
        output.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(&path, content).expect("write");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Deterministic, non-repeating-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const LONG_NAME: &str =
    "a-file-name-that-is-much-longer-than-sixty-four-characters-which-joliet-cuts-short.yaml";
const DEEP_FILE: &str = "d1/d2/d3/d4/d5/d6/d7/d8/d9/d10/deep.txt";

/// A tree with every awkward case, with modes the recipe must normalise.
fn awkward_tree(root: &Path) {
    write(root, "k8s/kubeadm", b"#!/bin/sh\necho kubeadm\n", 0o700);
    write(root, "k8s/kubelet", &pattern(70_000, 1), 0o755);
    write(root, "docker/x.tar", &pattern(5000, 2), 0o600);
    write(root, "docker/pause:3.10.tar", &pattern(2049, 3), 0o644);
    write(root, LONG_NAME, b"long name\n", 0o640);
    write(root, DEEP_FILE, b"more than eight levels down\n", 0o644);
    write(root, "empty", b"", 0o644);
    write(root, "kubelet.service", &pattern(2048, 4), 0o666);
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    symlink("k8s/kubeadm", root.join("kubeadm-link")).expect("symlink");
    symlink("../docker", root.join("k8s/docker-dir-link")).expect("symlink");
}

/// What the ISO must list: the source's regular files, with the modes the recipe gives them.
fn expected_files(src: &Path) -> Vec<SourceFile> {
    DirBundle::new(src)
        .list_files()
        .expect("list source")
        .into_iter()
        .map(|f| SourceFile {
            // `-chmod_r a+r,u+w,go-w` keeps execute bits; `-chmod 0755 /k8s/kubeadm` sets it.
            mode: Some(if f.path == "k8s/kubeadm" {
                0o755
            } else {
                (f.mode.expect("source mode") | 0o644) & !0o022
            }),
            ..f
        })
        .collect()
}

fn read_all(source: &dyn BundleSource, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    source
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read {path}: {e}"));
    out
}

fn build(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    awkward_tree(&src);
    let iso = tmp.path().join("bundle.iso");
    make_iso(&src, &iso, extra);
    (tmp, src, iso)
}

fn assert_same_tree(src: &Path, iso_path: &Path) {
    let iso = IsoBundle::open(iso_path).expect("open iso");
    assert!(iso.has_rock_ridge());
    let listed = iso.list_files().expect("list iso");
    assert_eq!(listed, expected_files(src));
    for file in &listed {
        let want = fs::read(src.join(&file.path)).expect("read source");
        assert_eq!(read_all(&iso, &file.path), want, "content of {}", file.path);
    }
}

#[test]
fn lists_and_reads_the_rock_ridge_tree() {
    let (_tmp, src, iso_path) = build(&[]);
    assert_same_tree(&src, &iso_path);

    let iso = IsoBundle::open(&iso_path).expect("open iso");
    assert_eq!(iso.volume_id(), "CDROM");
    assert_eq!(read_volume_id(&iso_path).expect("volume id"), "CDROM");
    assert_eq!(iso.describe(), format!("ISO {}", iso_path.display()));

    let paths: Vec<String> = iso
        .list_files()
        .expect("list")
        .into_iter()
        .map(|f| f.path)
        .collect();
    // The awkward names are there as they are, and symlinks and directories are not.
    for want in ["docker/pause:3.10.tar", LONG_NAME, DEEP_FILE, "empty"] {
        assert!(paths.iter().any(|p| p == want), "{want} missing: {paths:?}");
    }
    for absent in ["kubeadm-link", "k8s/docker-dir-link", "empty-dir", "k8s"] {
        assert!(!paths.iter().any(|p| p == absent), "{absent} listed");
    }

    let file = iso.open_file("k8s/kubelet").expect("open_file");
    assert_eq!(file.size(), 70_000);
}

#[test]
fn relocated_deep_directories_read_like_the_source() {
    // genisoimage (stock CKS's `mkisofs -R`) relocates directories deeper than 8 levels into
    // rr_moved, linked back with Rock Ridge CL/PL/RE entries; xorriso does so when told to.
    let (_tmp, src, iso_path) =
        build(&["-compliance", "deep_paths_off", "-rr_reloc_dir", "RR_MOVED"]);
    let image = fs::read(&iso_path).expect("read iso");
    assert!(
        image.windows(8).any(|w| w == b"RR_MOVED"),
        "xorriso did not relocate"
    );
    // The relocation directory is hidden and the deep file is at its original path.
    assert_same_tree(&src, &iso_path);
}

#[test]
fn open_errors_have_the_right_kind() {
    let (_tmp, _src, iso_path) = build(&[]);
    let iso = IsoBundle::open(&iso_path).expect("open iso");
    let kind = |path: &str| match iso.open(path) {
        Ok(_) => panic!("{path} opened"),
        Err(e) => {
            assert!(
                e.to_string().contains(&iso_path.display().to_string()),
                "{e} lacks the ISO path"
            );
            e.kind()
        }
    };
    assert_eq!(kind("absent"), io::ErrorKind::NotFound);
    assert_eq!(kind("docker/absent.tar"), io::ErrorKind::NotFound);
    assert_eq!(kind("absent-dir/x"), io::ErrorKind::NotFound);
    assert_eq!(kind("../etc/passwd"), io::ErrorKind::InvalidInput);
    assert_eq!(kind("/k8s/kubeadm"), io::ErrorKind::InvalidInput);
    assert_eq!(kind("k8s"), io::ErrorKind::IsADirectory);
    assert_ne!(kind("kubeadm-link"), io::ErrorKind::NotFound);
    // Case matters in the Rock Ridge tree.
    assert_eq!(kind("K8S/KUBEADM"), io::ErrorKind::NotFound);
    // The missing manifest is the NotFound verify_bundle turns into ManifestMissing.
    assert!(matches!(
        verify_bundle(&iso, &VerifyOptions::default()),
        Err(VerifyError::ManifestMissing { .. })
    ));
}

#[test]
fn not_an_iso_is_refused_with_its_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let junk = tmp.path().join("junk.iso");
    fs::write(&junk, pattern(64 * 2048, 9)).expect("write");
    let err = IsoBundle::open(&junk).expect_err("junk");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<IsoError>())
        .expect("an IsoError");
    assert_eq!(inner.path, junk);
    assert!(err.to_string().contains("junk.iso"), "{err}");
    assert_eq!(
        read_volume_id(&junk).expect_err("junk").kind(),
        io::ErrorKind::InvalidData
    );

    let absent = tmp.path().join("absent.iso");
    assert_eq!(
        IsoBundle::open(&absent).expect_err("absent").kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn reads_of_any_size_see_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    // Not a multiple of a sector nor of the read chunk.
    let content = pattern(3 * (1 << 20) + 12_345, 7);
    write(&src, "big.bin", &content, 0o644);
    let iso_path = tmp.path().join("x.iso");
    make_iso(&src, &iso_path, &[]);
    let iso = IsoBundle::open(&iso_path).expect("open");

    for size in [1usize, 7, 4096, 1 << 20, 5 << 20] {
        let mut reader = iso.open("big.bin").expect("open");
        let mut got = Vec::with_capacity(content.len());
        let mut buf = vec![0u8; size];
        // One-byte reads over the whole file would be slow in debug builds; do the first
        // 200 KiB that way, then read to the end.
        while got.len() < content.len().min(200 << 10) || size >= 4096 {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        reader.read_to_end(&mut got).expect("read rest");
        assert!(got == content, "reads of {size} bytes differ");
    }
}

#[test]
fn seeks_land_where_a_file_would() {
    use std::io::{Seek, SeekFrom};
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let content = pattern(3 * (1 << 20) + 12_345, 9);
    write(&src, "big.bin", &content, 0o644);
    let iso_path = tmp.path().join("x.iso");
    make_iso(&src, &iso_path, &[]);
    let iso = IsoBundle::open(&iso_path).expect("open");
    let mut reader = iso.open_seekable("big.bin").expect("open");
    let mut buf = [0u8; 100];
    // Inside the chunk already read, across chunks, backwards, from the start and the end.
    for (seek, at) in [
        (SeekFrom::Start(10), 10usize),
        (SeekFrom::Current(1000), 1110),
        (SeekFrom::Current((2 << 20) + 17), 1210 + (2 << 20) + 17),
        (SeekFrom::Current(-5000), 1310 + (2 << 20) + 17 - 5000),
        (SeekFrom::Start(3), 3),
        (SeekFrom::End(-100), content.len() - 100),
    ] {
        assert_eq!(reader.seek(seek).expect("seek"), at as u64, "{seek:?}");
        reader.read_exact(&mut buf).expect("read");
        assert!(buf[..] == content[at..at + 100], "bytes after {seek:?}");
    }
    assert_eq!(reader.read(&mut buf).expect("eof"), 0);
}

#[test]
fn a_bundle_moves_to_another_thread() {
    let (_tmp, src, iso_path) = build(&[]);
    let iso = IsoBundle::open(&iso_path).expect("open");
    let reader = iso.open_file("k8s/kubelet").expect("open");
    let handle = std::thread::spawn(move || {
        let mut reader = reader;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("read");
        (out, iso.list_files().expect("list").len())
    });
    let (content, count) = handle.join().expect("thread");
    assert_eq!(content, fs::read(src.join("k8s/kubelet")).expect("read"));
    assert_eq!(count, expected_files(&src).len());
}

fn entry(path: &str, content: &[u8], mode: u32, kind: FileKind) -> FileEntry {
    FileEntry {
        path: path.to_string(),
        size: content.len() as u64,
        sha256: Sha256Digest::of(content),
        mode,
        kind,
        source: "generated".to_string(),
    }
}

#[test]
fn verify_bundle_over_an_iso_and_catches_a_flipped_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("bundle");
    let marker = b"UNIQUE-MARKER-6f1c2d";
    let mut kubeadm = b"#!/bin/sh\n# ".to_vec();
    kubeadm.extend_from_slice(marker);
    kubeadm.extend_from_slice(b"\necho kubeadm\n");
    let unit = b"[Service]\nExecStart=/opt/bin/kubelet\n".to_vec();
    write(&src, "k8s/kubeadm", &kubeadm, 0o755);
    write(&src, "kubelet.service", &unit, 0o644);
    let manifest = BundleManifest {
        schema_version: SCHEMA_VERSION,
        name: "setup-v1.33.1".to_string(),
        builder: "iso_reader test".to_string(),
        kubernetes_version: KubeVersion::new(1, 33, 1),
        arch: Arch::Amd64,
        cni: "calico".to_string(),
        cni_plugins_version: KubeVersion::new(1, 6, 2),
        crictl_version: KubeVersion::new(1, 33, 0),
        etcd_version: None,
        files: vec![
            entry("k8s/kubeadm", &kubeadm, 0o755, FileKind::KubernetesBinary),
            entry("kubelet.service", &unit, 0o644, FileKind::KubeletService),
        ],
        images: vec![],
        blobs: vec![],
    };
    write(&src, MANIFEST_PATH, &manifest.to_json(), 0o644);
    let iso_path = tmp.path().join("bundle.iso");
    make_iso(&src, &iso_path, &[]);

    let iso = IsoBundle::open(&iso_path).expect("open");
    let verified = verify_bundle(
        &iso,
        &VerifyOptions {
            expected_arch: Some(Arch::Amd64),
            ..VerifyOptions::default()
        },
    )
    .expect("a good bundle verifies");
    assert_eq!(verified.manifest, manifest);
    assert_eq!(
        verified.bytes_checked,
        (kubeadm.len() + unit.len() + manifest.to_json().len()) as u64
    );

    // Flip one byte of the marker inside the image: the file's data, not its metadata.
    let mut image = fs::read(&iso_path).expect("read iso");
    let at: Vec<usize> = image
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the marker must occur once in the image");
    image[at[0] + 3] ^= 0x20;
    fs::write(&iso_path, &image).expect("write iso");

    let iso = IsoBundle::open(&iso_path).expect("open");
    match verify_bundle(&iso, &VerifyOptions::default()) {
        Err(VerifyError::DigestMismatch { path, expected, .. }) => {
            assert_eq!(path, "k8s/kubeadm");
            assert_eq!(expected, Sha256Digest::of(&kubeadm));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
}

/// Reading throughput on a ~200 MB file, against reading the source file itself. Prints MB/s;
/// set `CKS_ISO_COLD=1` (root) to drop the page cache before each measurement.
#[test]
#[ignore = "writes 400 MB; run with --release -- --ignored --nocapture"]
fn throughput_of_a_200_mb_file() {
    const SIZE: usize = 200 << 20;
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let block = pattern(1 << 20, 11);
    let mut content = Vec::with_capacity(SIZE);
    for i in 0..SIZE >> 20 {
        content.extend(block.iter().map(|b| b.wrapping_add(i as u8)));
    }
    write(&src, "docker/images.tar", &content, 0o644);
    let iso_path = tmp.path().join("x.iso");
    make_iso(&src, &iso_path, &[]);
    let want = Sha256Digest::of(&content);
    drop(content);

    let mb = SIZE as f64 / 1e6;
    // CKS_ISO_COLD=1 measures with a cold page cache instead (needs root).
    let cold = std::env::var("CKS_ISO_COLD").is_ok_and(|v| !v.is_empty() && v != "0");
    let time = |label: &str, read: &dyn Fn() -> u64| {
        if cold {
            // Root only: sync, then drop the page cache so the image is read from the disk.
            let _ = Command::new("sync").status();
            fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches (root only)");
        } else {
            read(); // warm the page cache: measure the reader, not the disk
        }
        let start = Instant::now();
        let n = read();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n, SIZE as u64);
        println!("{label}: {:.0} MB/s ({mb:.0} MB in {secs:.3} s)", mb / secs);
    };
    time("source file, io::copy", &|| {
        io::copy(
            &mut fs::File::open(src.join("docker/images.tar")).expect("open"),
            &mut io::sink(),
        )
        .expect("copy")
    });
    let iso = IsoBundle::open(&iso_path).expect("open");
    time("IsoBundle::open, io::copy (8 KiB reads)", &|| {
        io::copy(
            &mut iso.open("docker/images.tar").expect("open"),
            &mut io::sink(),
        )
        .expect("copy")
    });
    time("IsoBundle::open, 4 MiB reads", &|| {
        let mut reader = iso.open("docker/images.tar").expect("open");
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).expect("read");
            if n == 0 {
                break total;
            }
            total += n as u64;
        }
    });
    let start = Instant::now();
    let mut hashing = HashingWriter(Sha256::new());
    io::copy(
        &mut iso.open("docker/images.tar").expect("open"),
        &mut hashing,
    )
    .expect("hash");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(Sha256Digest::from_hasher(hashing.0), want);
    println!(
        "IsoBundle::open + sha256 (as verify_bundle does): {:.0} MB/s",
        mb / secs
    );
}

/// A `Write` that hashes.
struct HashingWriter(Sha256);

impl io::Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sparse 5 GiB file is stored as multi-extent (3 extents of at most 4 GiB - 2 KiB) and must
/// be listed with its whole size and read to its last byte.
#[test]
#[ignore = "xorriso writes a 5 GiB image (~35 s); run with --release -- --ignored --nocapture"]
fn file_over_4_gib_is_read_whole() {
    const SIZE: u64 = 5 << 30;
    const EXTENT: u64 = (4 << 30) - 2048;
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("docker")).expect("mkdir");
    let huge = src.join("docker/huge.tar");
    let file = fs::File::create(&huge).expect("create");
    file.set_len(SIZE).expect("truncate -s 5G");
    // Markers: the head, across the end of the first extent, and the tail.
    let markers: BTreeMap<u64, &[u8]> = [
        (0, &b"HEAD-MARKER"[..]),
        (EXTENT - 6, &b"ACROSS-EXTENTS"[..]),
        (SIZE - 11, &b"TAIL-MARKER"[..]),
    ]
    .into_iter()
    .collect();
    for (at, bytes) in &markers {
        file.write_all_at(bytes, *at).expect("marker");
    }
    drop(file);
    write(&src, "small", b"small\n", 0o644);

    let iso_path = tmp.path().join("big.iso");
    let start = Instant::now();
    make_iso(&src, &iso_path, &[]);
    println!("xorriso: {:.1} s", start.elapsed().as_secs_f64());

    let iso = IsoBundle::open(&iso_path).expect("open");
    let listed = iso.list_files().expect("list");
    assert_eq!(
        listed,
        vec![
            SourceFile {
                path: "docker/huge.tar".into(),
                size: SIZE,
                mode: Some(0o644)
            },
            SourceFile {
                path: "small".into(),
                size: 6,
                mode: Some(0o644)
            },
        ]
    );

    let start = Instant::now();
    let mut reader = iso.open("docker/huge.tar").expect("open");
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    let mut seen = 0;
    let mut nonzero_elsewhere = 0u64;
    loop {
        let n = reader.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let end = pos + n as u64;
        let mut covered = Vec::new();
        for (at, bytes) in &markers {
            let (m_start, m_end) = (*at, *at + bytes.len() as u64);
            if m_start < end && m_end > pos {
                let lo = m_start.max(pos);
                let hi = m_end.min(end);
                assert_eq!(
                    &chunk[(lo - pos) as usize..(hi - pos) as usize],
                    &bytes[(lo - m_start) as usize..(hi - m_start) as usize],
                    "marker at {at}"
                );
                seen += hi - lo;
                covered.push((lo - pos, hi - pos));
            }
        }
        if covered.is_empty() {
            nonzero_elsewhere += u64::from(chunk.iter().any(|b| *b != 0));
        }
        pos = end;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(pos, SIZE, "read the whole file");
    assert_eq!(
        seen,
        markers.values().map(|b| b.len() as u64).sum::<u64>(),
        "saw every marker byte"
    );
    assert_eq!(nonzero_elsewhere, 0, "the rest is zeros");
    println!(
        "read 5 GiB in {secs:.2} s ({:.0} MB/s)",
        SIZE as f64 / 1e6 / secs
    );
}

/// The same image through a read-only loop device: what the agent sees on a node (`/dev/sr0`),
/// where the device reports its own block size.
#[test]
#[ignore = "needs root and a free loop device; run with -- --ignored"]
fn reads_through_a_block_device() {
    let (_tmp, src, iso_path) = build(&[]);
    let out = Command::new("losetup")
        .args(["-f", "--show", "-r"])
        .arg(&iso_path)
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let result = std::panic::catch_unwind(|| {
        assert_eq!(read_volume_id(&dev).expect("volume id"), "CDROM");
        assert_same_tree(&src, &dev);
    });
    let _ = Command::new("losetup").arg("-d").arg(&dev).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
