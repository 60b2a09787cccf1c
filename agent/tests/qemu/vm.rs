//! A throwaway QEMU guest: a Debian kernel, a busybox initramfs with `cks-agent` in it, CD-ROMs,
//! and the serial console as the only way out.
//!
//! The assets come from `target/vm/` (or `$CKS_VM_DIR`), prepared by `scripts/vm-assets.sh`
//! (QEMU unpacked from Debian's debs, the kernel and its CD-ROM/iso9660/loop modules, busybox)
//! and `scripts/agent-static.sh` (`target/vm/agent/`: a static musl `cks-agent`, or the glibc one
//! with its libraries). Nothing here downloads.
//!
//! QEMU runs with TCG only (`-accel tcg`): the machines' `/dev/kvm` cannot run guests (platform
//! notes 7c). Every QEMU process is killed by pid when its [`Guest`] is dropped, and every wait
//! is bounded.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long a boot may take, start to power-off. A boot takes ~6 s on an idle 2-core machine;
/// the margin is for a machine busy compiling.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Guest memory, MiB: the initramfs (~15 MB), a copy of the bundle ISO in tmpfs, the agent.
const GUEST_MEMORY_MIB: u32 = 512;
/// How often the host looks at whether QEMU has exited.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Paths of the prepared assets.
pub struct Assets {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Firmware directories for `-L` (SeaBIOS, then QEMU's own ROMs).
    pub firmware: Vec<PathBuf>,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The kernel package it came from (`linux-image-6.1.0-56-amd64`).
    pub kernel_package: String,
    /// `*.ko` files, in `insmod` order (dependencies first).
    pub modules: Vec<PathBuf>,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The agent tree to copy into the guest's `/`: `bin/cks-agent` (+ libraries).
    pub agent_tree: PathBuf,
    /// `static` or `glibc`.
    pub agent_kind: String,
}

/// The VM asset directory: `$CKS_VM_DIR`, else the workspace's `target/vm`.
pub fn vm_dir() -> PathBuf {
    std::env::var_os("CKS_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target/vm"))
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

impl Assets {
    /// Finds the assets, with `work` as scratch space. The agent is the prepared one in
    /// `target/vm/agent` unless that is missing or older than the agent's sources; then the
    /// binary this `cargo test` built is laid out (glibc + libraries) in `work`, so the guest
    /// always runs the code under test.
    ///
    /// Panics with what to run when an asset is missing.
    pub fn locate(work: &Path) -> Assets {
        let vm = vm_dir();
        let hint = "run `make vm-assets` (scripts/vm-assets.sh; `make test` does it)";
        let qemu = vm.join("qemu/usr/bin/qemu-system-x86_64");
        let kernel_dir = vm.join("kernel");
        let busybox = vm.join("busybox");
        for path in [&qemu, &kernel_dir.join("vmlinuz"), &busybox] {
            assert!(path.is_file(), "{} missing: {hint}", path.display());
        }
        let order = std::fs::read_to_string(kernel_dir.join("modules/order"))
            .unwrap_or_else(|e| panic!("{}/modules/order: {e}: {hint}", kernel_dir.display()));
        let modules = order
            .split_whitespace()
            .map(|name| kernel_dir.join("modules").join(format!("{name}.ko")))
            .collect();
        let kernel_package = std::fs::read_to_string(kernel_dir.join("VERSION"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let (agent_tree, agent_kind) = agent_tree(&vm, work);
        Assets {
            qemu,
            firmware: vec![
                vm.join("qemu/usr/share/seabios"),
                vm.join("qemu/usr/share/qemu"),
            ],
            kernel: kernel_dir.join("vmlinuz"),
            kernel_package,
            modules,
            busybox,
            agent_tree,
            agent_kind,
        }
    }
}

/// The prepared agent tree if it is fresh, else one made from `CARGO_BIN_EXE_cks-agent`.
fn agent_tree(vm: &Path, work: &Path) -> (PathBuf, String) {
    let prepared = vm.join("agent");
    let built = mtime(&prepared.join("bin/cks-agent"));
    let newest_source = newest_source_mtime();
    match built {
        Some(built) if built >= newest_source => {
            let kind = std::fs::read_to_string(prepared.join("KIND")).unwrap_or_default();
            return (prepared, kind.trim().to_string());
        }
        Some(_) => eprintln!(
            "{} is older than the agent's sources (run `make agent-static`); using this build's \
             cks-agent instead",
            prepared.display()
        ),
        None => eprintln!(
            "{} missing (run `make agent-static`); using this build's cks-agent instead",
            prepared.display()
        ),
    }
    let tree = work.join("agent");
    let status = Command::new(workspace_dir().join("scripts/vm-agent-tree.sh"))
        .arg(env!("CARGO_BIN_EXE_cks-agent"))
        .arg(&tree)
        .status()
        .expect("run scripts/vm-agent-tree.sh");
    assert!(status.success(), "vm-agent-tree.sh failed: {status}");
    let kind = std::fs::read_to_string(tree.join("KIND")).expect("KIND");
    (tree, kind.trim().to_string())
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time among the files the agent binary is built from (its sources,
/// the proto crate, the lock file).
fn newest_source_mtime() -> SystemTime {
    let ws = workspace_dir();
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![
        ws.join("agent/src"),
        ws.join("agent/Cargo.toml"),
        ws.join("proto/src"),
        ws.join("proto/proto"),
        ws.join("proto/build.rs"),
        ws.join("proto/Cargo.toml"),
        ws.join("Cargo.lock"),
    ];
    while let Some(path) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&path) {
            stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        } else if let Some(t) = mtime(&path) {
            newest = newest.max(t);
        }
    }
    newest
}

// === the initramfs ===

/// A `cpio -H newc` archive being written: the format the kernel unpacks as the initramfs.
/// Every entry is owned by root; nothing depends on the host's files' owners or times.
pub struct Initramfs {
    out: Vec<u8>,
    next_inode: u32,
}

impl Initramfs {
    /// An empty archive with the directories a busybox system needs and `/dev/console` (the
    /// kernel opens it for init's output before any devtmpfs exists).
    pub fn new() -> Initramfs {
        let mut initramfs = Initramfs {
            out: Vec::new(),
            next_inode: 1,
        };
        for dir in [
            "bin", "dev", "proc", "sys", "tmp", "run", "mnt", "node", "modules",
        ] {
            initramfs.dir(dir);
        }
        // Character device 5:1.
        initramfs.entry("dev/console", 0o020600, &[], (5, 1));
        initramfs
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) {
        self.entry(path, 0o040755, &[], (0, 0));
    }

    /// Adds a regular file with `mode` (permission bits).
    pub fn file(&mut self, path: &str, mode: u32, content: &[u8]) {
        self.entry(path, 0o100000 | (mode & 0o7777), content, (0, 0));
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120777, target.as_bytes(), (0, 0));
    }

    /// Copies a host directory tree under `/` (directories, files with their modes, symlinks).
    pub fn tree(&mut self, host_dir: &Path) {
        let mut stack = vec![host_dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.expect("dir entry").path())
                .collect();
            entries.sort();
            for path in entries {
                let rel = path
                    .strip_prefix(host_dir)
                    .expect("under the tree")
                    .to_string_lossy()
                    .into_owned();
                let meta = std::fs::symlink_metadata(&path).expect("metadata");
                if meta.is_dir() {
                    self.dir(&rel);
                    stack.push(path);
                } else if meta.file_type().is_symlink() {
                    let target = std::fs::read_link(&path).expect("readlink");
                    self.symlink(&rel, &target.to_string_lossy());
                } else {
                    let content = std::fs::read(&path).expect("read");
                    self.file(&rel, meta.permissions().mode(), &content);
                }
            }
        }
    }

    fn entry(&mut self, path: &str, mode: u32, content: &[u8], rdev: (u32, u32)) {
        let name_len = path.len() + 1; // With its NUL.
        let fields = [
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            u32::try_from(content.len()).expect("initramfs file under 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(name_len).expect("short name"),
            0, // check
        ];
        self.next_inode += 1;
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.out.extend_from_slice(path.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(content);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    /// Ends the archive and writes it to `path`.
    pub fn write(mut self, path: &Path) -> io::Result<()> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        let mut file = File::create(path)?;
        file.write_all(&self.out)?;
        file.sync_all()
    }
}

// === the guest ===

/// A running QEMU; killed (by pid) and reaped when dropped.
pub struct Guest {
    child: Child,
    console: PathBuf,
    started: Instant,
}

/// What a finished boot printed.
pub struct Boot {
    /// The serial console, `\r` removed.
    pub console: String,
    /// Wall-clock time from QEMU's start to its exit.
    pub elapsed: Duration,
}

/// How to boot.
pub struct BootSpec<'a> {
    /// The assets.
    pub assets: &'a Assets,
    /// The initramfs.
    pub initramfs: &'a Path,
    /// A disc on the IDE primary master (`/dev/sr0`, the first the agent's scan meets).
    pub first_disc: &'a Path,
    /// A disc on the IDE secondary master, the slot `-cdrom` uses (and the default machine's
    /// otherwise empty CD-ROM drive): `/dev/sr1`.
    pub cdrom: &'a Path,
    /// Where the console log goes.
    pub console: &'a Path,
}

impl Guest {
    /// Starts QEMU: TCG, no network, no display, the console on the serial port (written to
    /// `spec.console`), and power-off ends QEMU (`-no-reboot`, `panic=-1`).
    pub fn start(spec: &BootSpec<'_>) -> Guest {
        let console = File::create(spec.console).expect("console file");
        let mut command = Command::new(&spec.assets.qemu);
        for dir in &spec.assets.firmware {
            command.arg("-L").arg(dir);
        }
        command
            .args(["-accel", "tcg", "-machine", "pc", "-smp", "1"])
            .args(["-m", &GUEST_MEMORY_MIB.to_string()])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&spec.assets.kernel)
            .arg("-initrd")
            .arg(spec.initramfs)
            .args(["-append", "console=ttyS0 panic=-1 quiet"]);
        // `-cdrom FILE` is `if=ide,index=2,media=cdrom`; spelled out to say `format=raw`.
        for (index, image) in [(0, spec.first_disc), (2, spec.cdrom)] {
            let mut drive = std::ffi::OsString::from("if=ide,media=cdrom,format=raw,index=");
            drive.push(index.to_string());
            drive.push(",file=");
            drive.push(image.as_os_str());
            command.arg("-drive").arg(drive);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(console.try_clone().expect("clone")))
            .stderr(Stdio::from(console))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", spec.assets.qemu.display()));
        Guest {
            child,
            console: spec.console.to_path_buf(),
            started: Instant::now(),
        }
    }

    /// Waits for the guest to power off, at most [`BOOT_TIMEOUT`]. Panics, with the console,
    /// when it does not, or when QEMU fails.
    pub fn wait(mut self) -> Boot {
        let started = self.started;
        loop {
            match self.child.try_wait().expect("wait for qemu") {
                Some(status) => {
                    let console = self.console_text();
                    assert!(
                        status.success(),
                        "qemu exited with {status}; console:\n{console}"
                    );
                    return Boot {
                        console,
                        elapsed: started.elapsed(),
                    };
                }
                None if started.elapsed() > BOOT_TIMEOUT => {
                    // Drop kills it; the console so far says where it hung.
                    panic!(
                        "guest still running after {BOOT_TIMEOUT:?}; console:\n{}",
                        self.console_text()
                    );
                }
                None => std::thread::sleep(POLL_INTERVAL),
            }
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).replace('\r', "")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGKILL to this pid only; then reap it so no zombie is left.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
