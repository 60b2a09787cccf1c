//! One-time enrollment tokens (contract 2): short-lived, scoped to one cluster, one node and one
//! role, consumed by the first successful enrollment.
//!
//! A token is spent only by an enrollment that succeeds: the hub verifies the CSR before it
//! redeems the token, and a token presented by the wrong node, expired or unknown is left as it
//! was. Redeeming binds the token to the public key being certified, so an agent whose reply
//! was lost retries with the same key and is answered again; any other key is refused.
//!
//! Only a SHA-256 of each token is kept, so neither the store nor a memory dump hands out a
//! usable token; the token itself travels once, in the VM's userdata.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::pki::NodeIdentity;

/// Why a token was refused. Deliberately vague towards the caller (PERMISSION_DENIED), precise
/// in the controller's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No such token.
    #[error("unknown enrollment token")]
    Unknown,
    /// Already used by an enrollment.
    #[error("enrollment token already used")]
    Used,
    /// Past its expiry.
    #[error("enrollment token expired")]
    Expired,
    /// Issued for another node.
    #[error("enrollment token was issued for node {expected:?}, not {got:?}")]
    WrongNode {
        /// The node it was issued for.
        expected: String,
        /// The node that presented it.
        got: String,
    },
}

/// Where enrollment tokens live. The in-memory [`MemoryTokens`] serves tests and a single
/// controller; the controller's store implements it for tokens that survive a restart.
pub trait EnrollmentTokens: Send + Sync + 'static {
    /// Issues a token for `identity`, valid for `ttl`. Returns the token (secret).
    fn issue(&self, identity: NodeIdentity, ttl: Duration) -> String;
    /// Checks, without spending it, that `token` presented by `node_name` would redeem for
    /// the key `key_sha256`; returns the identity it was issued for.
    ///
    /// # Errors
    /// As [`EnrollmentTokens::redeem`].
    fn check(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError>;
    /// Redeems `token` presented by `node_name` for the public key `key_sha256` (of a verified
    /// CSR): the first redemption binds the token to that key; a later one succeeds only for the
    /// same key (a retried enrollment whose reply was lost). A refusal changes nothing.
    ///
    /// # Errors
    /// [`TokenError`] when unknown, used by another key, expired or issued for another node.
    fn redeem(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError>;
    /// Drops every token of a cluster (on delete).
    fn revoke_cluster(&self, cluster_id: &str);
}

/// Tokens in memory.
#[derive(Debug, Default)]
pub struct MemoryTokens {
    tokens: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    identity: NodeIdentity,
    expires: SystemTime,
    /// The key that redeemed it.
    used_by: Option<String>,
}

/// A fresh random token: 32 bytes, URL-safe base64.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The form a token is kept in.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl EnrollmentTokens for MemoryTokens {
    fn issue(&self, identity: NodeIdentity, ttl: Duration) -> String {
        let token = generate_token();
        let entry = Entry {
            identity,
            expires: SystemTime::now() + ttl,
            used_by: None,
        };
        self.lock().insert(token_digest(&token), entry);
        token
    }

    fn check(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError> {
        let tokens = self.lock();
        let entry = tokens
            .get(&token_digest(token))
            .ok_or(TokenError::Unknown)?;
        entry.check(node_name, key_sha256)?;
        Ok(entry.identity.clone())
    }

    fn redeem(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError> {
        let mut tokens = self.lock();
        let entry = tokens
            .get_mut(&token_digest(token))
            .ok_or(TokenError::Unknown)?;
        entry.check(node_name, key_sha256)?;
        entry.used_by = Some(key_sha256.to_string());
        Ok(entry.identity.clone())
    }

    fn revoke_cluster(&self, cluster_id: &str) {
        self.lock()
            .retain(|_, entry| entry.identity.cluster_id != cluster_id);
    }
}

impl Entry {
    fn check(&self, node_name: &str, key_sha256: &str) -> Result<(), TokenError> {
        let entry = self;
        if entry.used_by.as_deref().is_some_and(|k| k != key_sha256) {
            return Err(TokenError::Used);
        }
        if SystemTime::now() > entry.expires {
            return Err(TokenError::Expired);
        }
        if entry.identity.node_name != node_name {
            return Err(TokenError::WrongNode {
                expected: entry.identity.node_name.clone(),
                got: node_name.to_string(),
            });
        }
        Ok(())
    }
}

impl MemoryTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written; keep going.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tokens in the controller's store (digests only), so nodes deployed before a controller
/// restart can still enroll after it.
pub struct StoreTokens {
    store: std::sync::Arc<dyn crate::store::Store>,
}

impl StoreTokens {
    /// Tokens kept in `store`.
    pub fn new(store: std::sync::Arc<dyn crate::store::Store>) -> Self {
        StoreTokens { store }
    }
}

fn store_failed(err: crate::store::StoreError) -> TokenError {
    tracing::error!(error = %crate::error_chain(&err), "cannot read enrollment tokens");
    TokenError::Unknown
}

fn check_record(
    record: &crate::store::TokenRecord,
    node_name: &str,
    key_sha256: &str,
) -> Result<(), TokenError> {
    if record.used && record.key_sha256.as_deref() != Some(key_sha256) {
        return Err(TokenError::Used);
    }
    if unix(SystemTime::now()) > record.expires {
        return Err(TokenError::Expired);
    }
    if record.node_name != node_name {
        return Err(TokenError::WrongNode {
            expected: record.node_name.clone(),
            got: node_name.to_string(),
        });
    }
    Ok(())
}

fn identity_of(record: crate::store::TokenRecord) -> NodeIdentity {
    let role = cks_proto::agent::NodeRole::from_str_name(&record.role)
        .unwrap_or(cks_proto::agent::NodeRole::Worker);
    NodeIdentity {
        cluster_id: record.cluster_id,
        node_name: record.node_name,
        role,
    }
}

fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl EnrollmentTokens for StoreTokens {
    fn issue(&self, identity: NodeIdentity, ttl: Duration) -> String {
        let token = generate_token();
        let record = crate::store::TokenRecord {
            digest: token_digest(&token),
            cluster_id: identity.cluster_id.clone(),
            node_name: identity.node_name.clone(),
            role: identity.role.as_str_name().to_string(),
            expires: unix(SystemTime::now() + ttl),
            used: false,
            key_sha256: None,
        };
        if let Err(err) = self.store.put_token(&record) {
            // The node will fail to enroll and say so; the workflow times out and reports it.
            tracing::error!(error = %crate::error_chain(&err), node = %identity.node_name,
                "cannot store an enrollment token");
        }
        token
    }

    fn check(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError> {
        let record = self
            .store
            .token(&token_digest(token))
            .map_err(store_failed)?
            .ok_or(TokenError::Unknown)?;
        check_record(&record, node_name, key_sha256)?;
        Ok(identity_of(record))
    }

    /// Checked first, spent last: the spending write is a compare-and-set, so of two
    /// enrollments racing with different keys exactly one wins.
    fn redeem(
        &self,
        token: &str,
        node_name: &str,
        key_sha256: &str,
    ) -> Result<NodeIdentity, TokenError> {
        let digest = token_digest(token);
        let record = self
            .store
            .token(&digest)
            .map_err(store_failed)?
            .ok_or(TokenError::Unknown)?;
        check_record(&record, node_name, key_sha256)?;
        let before = self
            .store
            .take_token(&digest, key_sha256)
            .map_err(store_failed)?
            .ok_or(TokenError::Unknown)?;
        check_record(&before, node_name, key_sha256)?;
        Ok(identity_of(before))
    }

    fn revoke_cluster(&self, cluster_id: &str) {
        if let Err(err) = self.store.delete_tokens(cluster_id) {
            tracing::error!(error = %crate::error_chain(&err), "cannot delete enrollment tokens");
        }
    }
}

#[cfg(test)]
mod tests {
    use cks_proto::agent::NodeRole;

    use super::*;

    fn identity() -> NodeIdentity {
        NodeIdentity {
            cluster_id: "c1".into(),
            node_name: "n1".into(),
            role: NodeRole::Worker,
        }
    }

    /// Both implementations behave alike.
    fn each(check: impl Fn(&dyn EnrollmentTokens)) {
        check(&MemoryTokens::default());
        let store = crate::store::SqliteStore::in_memory().expect("store");
        check(&StoreTokens::new(std::sync::Arc::new(store)));
    }

    #[test]
    fn a_token_works_for_one_key_of_its_node_only() {
        each(|tokens| {
            let token = tokens.issue(identity(), Duration::from_secs(60));
            // The wrong node does not spend it.
            assert!(matches!(
                tokens.redeem(&token, "n2", "k1"),
                Err(TokenError::WrongNode { .. })
            ));
            assert_eq!(tokens.check(&token, "n1", "k1"), Ok(identity()));
            assert_eq!(tokens.check(&token, "n1", "k1"), Ok(identity()));
            assert_eq!(tokens.redeem(&token, "n1", "k1"), Ok(identity()));
            assert_eq!(tokens.check(&token, "n1", "k2"), Err(TokenError::Used));
            // The same key again (its reply was lost): answered again.
            assert_eq!(tokens.redeem(&token, "n1", "k1"), Ok(identity()));
            assert_eq!(tokens.redeem(&token, "n1", "k2"), Err(TokenError::Used));
            assert_eq!(tokens.redeem("nope", "n1", "k1"), Err(TokenError::Unknown));
        });
    }

    #[test]
    fn expired_and_revoked_tokens_are_refused() {
        each(|tokens| {
            let token = tokens.issue(identity(), Duration::ZERO);
            std::thread::sleep(Duration::from_millis(1100));
            assert_eq!(tokens.redeem(&token, "n1", "k"), Err(TokenError::Expired));
            let token = tokens.issue(identity(), Duration::from_secs(60));
            tokens.revoke_cluster("c1");
            assert_eq!(tokens.redeem(&token, "n1", "k"), Err(TokenError::Unknown));
        });
    }
}
