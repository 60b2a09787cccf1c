//! Secrets at rest: kubeconfigs and registry passwords are sealed with ChaCha20-Poly1305 under
//! a key kept in a file of its own (mode 0600, created on first start), so a copy of the
//! database alone reveals nothing. The cluster id and secret name are the associated data: a
//! sealed value moved to another row does not open. A key file that group or others may read
//! is refused at load (the error names the file and `chmod 600`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Key length in bytes.
const KEY_LEN: usize = 32;

/// Sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or created.
    #[error("cannot use the secrets key file {path}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds something else than a key.
    #[error("secrets key file {0} is not a {KEY_LEN}-byte key")]
    BadKey(PathBuf),
    /// The key file is readable by others than its owner.
    #[error(
        "secrets key file {path} has mode {mode:04o}, readable by others than its owner; \
         run `chmod 600 {path}` (and check who may have read it)"
    )]
    KeyFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A sealed value does not open with this key (tampered, truncated, or another key).
    #[error("a sealed secret does not open with this controller's key")]
    Open,
}

/// The sealing key.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
}

fn aad(cluster_id: &str, name: &str) -> Vec<u8> {
    format!("{cluster_id}\0{name}").into_bytes()
}

// === impl Sealer ===

impl Sealer {
    /// The key in `path`, created (0600) when the file does not exist.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds no valid key.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let key_file = |source| SealError::KeyFile {
            path: path.to_path_buf(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(path)
                    .map_err(key_file)?
                    .permissions()
                    .mode()
                    & 0o7777;
                if mode & 0o077 != 0 {
                    return Err(SealError::KeyFileMode {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                bytes
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(key_file)?;
                }
                let key: [u8; KEY_LEN] = random();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(key_file)?;
                file.write_all(&key).map_err(key_file)?;
                file.sync_all().map_err(key_file)?;
                key.to_vec()
            }
            Err(err) => return Err(key_file(err)),
        };
        Self::from_bytes(&bytes).ok_or_else(|| SealError::BadKey(path.to_path_buf()))
    }

    /// A sealer with a fresh random key (tests).
    pub fn ephemeral() -> Sealer {
        let key: [u8; KEY_LEN] = random();
        // A KEY_LEN-byte key is always valid for ChaCha20-Poly1305.
        Self::from_bytes(&key).expect("valid key length")
    }

    fn from_bytes(bytes: &[u8]) -> Option<Sealer> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `plaintext` for `(cluster_id, name)`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, cluster_id: &str, name: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = random();
        let mut data = plaintext.to_vec();
        // Sealing only fails for inputs beyond ChaCha20's 256 GiB limit.
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(cluster_id, name)),
                &mut data,
            )
            .expect("secret within AEAD limits");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// Opens what [`Sealer::seal`] produced for the same `(cluster_id, name)`.
    ///
    /// # Errors
    /// [`SealError::Open`] when the value was altered, truncated, or sealed elsewhere.
    pub fn open(&self, cluster_id: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(cluster_id, name)), &mut data)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_their_row_and_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        let sealer = Sealer::load_or_create(&path).expect("create");
        let sealed = sealer.seal("c1", "kubeconfig", b"apiVersion: v1");
        assert!(!sealed.windows(5).any(|w| w == b"apiVe"));
        let again = Sealer::load_or_create(&path).expect("load");
        assert_eq!(
            again.open("c1", "kubeconfig", &sealed).expect("open"),
            b"apiVersion: v1"
        );
        assert!(again.open("c2", "kubeconfig", &sealed).is_err());
        assert!(
            Sealer::ephemeral()
                .open("c1", "kubeconfig", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(again.open("c1", "kubeconfig", &tampered).is_err());
        let mode = std::fs::metadata(&path).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn a_key_file_readable_by_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.key");
        Sealer::load_or_create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Sealer::load_or_create(&path).expect_err("0644 refused");
        let text = err.to_string();
        assert!(
            matches!(err, SealError::KeyFileMode { mode: 0o644, .. }),
            "{text}"
        );
        assert!(
            text.contains("secrets.key") && text.contains("chmod 600"),
            "{text}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Sealer::load_or_create(&path).expect("0600 accepted");
    }
}
