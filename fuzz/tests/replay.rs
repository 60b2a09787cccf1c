//! Every fuzz target over its committed corpus (`fuzz/corpus/<target>/`) and a bounded number of
//! deterministic mutations of it: what `make test` runs of the fuzzers, in a few seconds. A
//! panic names the target and the input (written to `target/tmp/fuzz-failures/`) so it can be
//! replayed with `cargo fuzz run <target> <file>` and added to the corpus once fixed.

use std::path::{Path, PathBuf};

/// Mutations of each corpus file (each a few random edits); fewer for large inputs.
const MUTATIONS_SMALL: u32 = 400;
const MUTATIONS_LARGE: u32 = 40;
const LARGE: usize = 16 * 1024;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = std::fs::read(&path).expect("a corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus for {target} in {}",
        dir.display()
    );
    files
}

/// xorshift64*: deterministic, so a failure here fails again on the next run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One to four edits of the kinds libFuzzer makes: flip a bit, set an interesting byte, insert,
/// delete, duplicate a chunk, splice in another corpus file, truncate.
fn mutate(rng: &mut Rng, input: &[u8], others: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = at.min(out.len() - 1);
                out[i] = *[
                    0u8, 0xff, 0x7f, 0x80, b'\n', b'&', b'=', b'%', b':', b'{', b'-',
                ]
                .get(rng.below(11))
                .unwrap_or(&0);
            }
            2 => {
                let byte = rng.next() as u8;
                out.insert(at, byte);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                out.drain(at..end);
            }
            4 if at < out.len() => {
                let end = (at + 1 + rng.below(64)).min(out.len());
                let chunk = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, chunk);
            }
            5 if !others.is_empty() => {
                let other = &others[rng.below(others.len())].1;
                let from = rng.below(other.len());
                let end = (from + rng.below(256)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            _ => out.truncate(at),
        }
    }
    out
}

fn run(target: &str, input: &[u8], what: &str) {
    let fuzz = cks_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a target");
    if let Err(panic) = std::panic::catch_unwind(|| fuzz(input)) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).expect("failures dir");
        let file = dir.join(format!(
            "{target}-{}",
            cks_proto::ids::Sha256Digest::of(input).hex()
        ));
        std::fs::write(&file, input).expect("write the input");
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "{target} panicked on {what} (input saved as {}): {message}",
            file.display()
        );
    }
}

fn replay(target: &str) {
    let files = corpus(target);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for (path, bytes) in &files {
        run(target, bytes, &path.display().to_string());
        let mutations = if bytes.len() > LARGE {
            MUTATIONS_LARGE
        } else {
            MUTATIONS_SMALL
        };
        for n in 0..mutations {
            let input = mutate(&mut rng, bytes, &files);
            run(
                target,
                &input,
                &format!("mutation {n} of {}", path.display()),
            );
        }
    }
}

#[test]
fn api_request() {
    replay("api_request");
}

#[test]
fn bundle_manifest() {
    replay("bundle_manifest");
}

#[test]
fn iso_reader() {
    replay("iso_reader");
}

#[test]
fn image_archive() {
    replay("image_archive");
}

#[test]
fn manifest_yaml() {
    replay("manifest_yaml");
}

#[test]
fn every_target_has_a_replay_test_and_a_libfuzzer_binary() {
    let source = include_str!("replay.rs");
    let cargo = include_str!("../Cargo.toml");
    for (name, _) in cks_fuzz::TARGETS {
        assert!(source.contains(&format!("fn {name}() {{")), "{name}");
        assert!(cargo.contains(&format!("name = \"{name}\"")), "{name}");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("fuzz_targets/{name}.rs"))
                .is_file(),
            "{name}"
        );
    }
}
