//! SSH keys for `createSSHKeyPair` and `registerSSHKeyPair`: a real Ed25519 key pair in
//! OpenSSH's formats (`ssh-keygen -y` reads the private key back), public key parsing and
//! CloudStack's MD5 fingerprint.
//!
//! CloudStack generates RSA pairs; the simulator makes Ed25519 ones (instant, with `ring`,
//! which the workspace already builds). Clients treat `privatekey` as opaque text, so the
//! difference shows only to someone who inspects the key type.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// The key type of generated keys.
const ED25519: &str = "ssh-ed25519";
/// Line length of the armored private key (as ssh-keygen writes it).
const PEM_LINE: usize = 70;

/// A freshly generated key pair. `Debug` leaves the private key out.
pub struct GeneratedKey {
    /// `ssh-ed25519 AAAA… <comment>`.
    pub public_key: String,
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` … (secret: returned once, never stored or logged).
    pub private_key: String,
    /// The public key blob.
    pub blob: Vec<u8>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("public_key", &self.public_key)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// A public key that parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `ssh-rsa`, `ssh-ed25519`, `ecdsa-sha2-nistp256`, …
    pub algorithm: String,
    /// The decoded key blob.
    pub blob: Vec<u8>,
}

/// Why a key could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    /// The system random generator failed.
    #[error("failed to draw random bytes for a key pair")]
    Random,
    /// Not `<type> <base64 blob> [comment]` with a blob of that type.
    #[error("public key is invalid")]
    InvalidPublicKey,
}

fn put_string(out: &mut Vec<u8>, data: &[u8]) {
    // Lengths here are at most a few hundred bytes.
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
}

fn ed25519_blob(public: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(51);
    put_string(&mut blob, ED25519.as_bytes());
    put_string(&mut blob, public);
    blob
}

/// Generates an Ed25519 key pair whose public line ends with `comment`.
///
/// # Errors
/// [`SshKeyError::Random`].
pub fn generate(comment: &str) -> Result<GeneratedKey, SshKeyError> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).map_err(|_| SshKeyError::Random)?;
    let mut check = [0u8; 4];
    rng.fill(&mut check).map_err(|_| SshKeyError::Random)?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| SshKeyError::Random)?;
    let public = pair.public_key().as_ref().to_vec();
    let blob = ed25519_blob(&public);

    // openssh-key-v1, unencrypted: header, the public blob, then the private section padded to
    // the 8-byte block size.
    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, ED25519.as_bytes());
    put_string(&mut private, &public);
    let mut secret = seed.to_vec();
    secret.extend_from_slice(&public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }
    let mut body = b"openssh-key-v1\0".to_vec();
    put_string(&mut body, b"none");
    put_string(&mut body, b"none");
    put_string(&mut body, b"");
    body.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut body, &blob);
    put_string(&mut body, &private);
    let encoded = STANDARD.encode(&body);
    let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(PEM_LINE) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");

    let mut public_key = format!("{ED25519} {}", STANDARD.encode(&blob));
    if !comment.is_empty() {
        public_key.push(' ');
        public_key.push_str(comment);
    }
    Ok(GeneratedKey {
        public_key,
        private_key: pem,
        blob,
    })
}

/// Parses an OpenSSH public key line (`<type> <base64> [comment]`); the blob must name the same
/// type.
///
/// # Errors
/// [`SshKeyError::InvalidPublicKey`].
pub fn parse_public(line: &str) -> Result<PublicKey, SshKeyError> {
    let mut words = line.split_whitespace();
    let (Some(algorithm), Some(data)) = (words.next(), words.next()) else {
        return Err(SshKeyError::InvalidPublicKey);
    };
    let blob = STANDARD
        .decode(data)
        .map_err(|_| SshKeyError::InvalidPublicKey)?;
    let named = blob
        .get(..4)
        .and_then(|len| <[u8; 4]>::try_from(len).ok())
        .map(|len| u32::from_be_bytes(len) as usize)
        .and_then(|len| blob.get(4..4 + len))
        .ok_or(SshKeyError::InvalidPublicKey)?;
    if named != algorithm.as_bytes() || blob.len() <= 4 + named.len() {
        return Err(SshKeyError::InvalidPublicKey);
    }
    Ok(PublicKey {
        algorithm: algorithm.to_owned(),
        blob,
    })
}

/// CloudStack's fingerprint: the MD5 of the key blob as colon-separated hex pairs.
pub fn fingerprint(blob: &[u8]) -> String {
    Md5::digest(blob)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_public_keys_parse_back_and_fingerprint_like_ssh_keygen() {
        let key = generate("cloudsim").unwrap();
        let parsed = parse_public(&key.public_key).unwrap();
        assert_eq!(parsed.algorithm, "ssh-ed25519");
        assert_eq!(parsed.blob, key.blob);
        let print = fingerprint(&parsed.blob);
        assert_eq!(print.len(), 47, "{print}");
        assert_eq!(print.matches(':').count(), 15);
        assert!(
            key.private_key
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        assert!(!format!("{key:?}").contains("PRIVATE"), "Debug redacts");
        assert_ne!(generate("x").unwrap().blob, key.blob, "fresh each time");
    }

    #[test]
    fn malformed_public_keys_are_refused() {
        let blob = STANDARD.encode(ed25519_blob(&[7u8; 32]));
        assert!(parse_public(&format!("ssh-ed25519 {blob} me@host")).is_ok());
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 !!!notbase64",
            &format!("ssh-rsa {blob}"),
            "ssh-ed25519 AAAA",
        ] {
            assert!(parse_public(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_keygen_reads_the_private_key_when_installed() {
        use cks_fixtures::skip::{Need, require};
        if !require(
            "reading the key with ssh-keygen",
            &[Need::Tools(&["ssh-keygen"])],
        ) {
            return;
        }
        let key = generate("cloudsim-test").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        std::fs::write(&path, &key.private_key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let derived = String::from_utf8_lossy(&out.stdout);
        let ours: Vec<&str> = key.public_key.split_whitespace().take(2).collect();
        let theirs: Vec<&str> = derived.split_whitespace().take(2).collect();
        assert_eq!(ours, theirs);
    }
}
