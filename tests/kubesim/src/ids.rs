//! Random names: object UIDs, `generateName` suffixes, bootstrap tokens.
//!
//! Not cryptographic randomness; unique enough for a simulator (time, pid and a counter,
//! hashed). Tokens made from it are test secrets only.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The alphabet Kubernetes uses for `generateName` suffixes (no vowels, no look-alikes).
pub const NAME_SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `n` pseudo-random characters from `alphabet`.
pub fn random_chars(n: usize, alphabet: &[u8]) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(n);
    let mut round = 0u32;
    while out.len() < n {
        let seed = format!(
            "{:?}{}{}{round}",
            std::time::SystemTime::now(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        for b in Sha256::digest(seed.as_bytes()) {
            if out.len() == n {
                break;
            }
            out.push(alphabet[usize::from(b) % alphabet.len()] as char);
        }
        round += 1;
    }
    out
}

/// A UUID-shaped unique id (`metadata.uid`).
pub fn uid() -> String {
    let h = random_chars(32, b"0123456789abcdef");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// A 5-character `generateName` suffix.
pub fn name_suffix() -> String {
    random_chars(5, NAME_SUFFIX_ALPHABET)
}

/// A stable short hash of `text` in the suffix alphabet (`pod-template-hash`).
pub fn stable_hash(text: &str, n: usize) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(n)
        .map(|b| NAME_SUFFIX_ALPHABET[usize::from(*b) % NAME_SUFFIX_ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_their_shapes() {
        let u = uid();
        assert_eq!(u.len(), 36);
        assert_ne!(u, uid());
        assert_eq!(name_suffix().len(), 5);
        assert_eq!(random_chars(70, b"ab").len(), 70);
        assert_eq!(stable_hash("x", 10), stable_hash("x", 10));
    }
}
