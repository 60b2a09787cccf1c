//! The controller's side of CloudStack: its API client and the request-signature code.
//!
//! * [`sign`]: CloudStack's HMAC-SHA1 request signature, both to sign the controller's own calls
//!   and to verify the calls the controller's API endpoint receives (contract 3).
//! * [`client`]: [`CloudStackClient`], a signed JSON client over HTTP(S) with async-job polling,
//!   pagination, retries of read-only commands, a rate limit, and [`CloudStackClient::forward`]
//!   for the endpoint's drop-in proxy.
//! * [`types`]: lenient serde types for the CloudStack objects the controller reads.
//! * [`identity`]: [`IdentityResolver`], who owns an API key (and its secret), cached briefly.
//!
//! Secret keys travel as [`SecretKey`], whose `Debug` prints nothing of the key; no function
//! here logs or formats a secret, a signature or a parameter value into an error.

pub mod client;
pub mod identity;
pub mod sign;
pub mod types;

pub use client::{AsyncJob, ClientConfig, CloudStackClient, CloudStackError, ForwardedResponse};
pub use identity::{Caller, IdentityError, IdentityResolver, RoleType};

use serde::Deserialize;

/// A CloudStack secret key (or any other credential). `Debug` is redacted; there is no
/// `Display` and no `Serialize`, so it can only leave through [`SecretKey::expose_secret`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretKey(String);

// === impl SecretKey ===

impl SecretKey {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for signing. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

impl From<String> for SecretKey {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl From<&str> for SecretKey {
    fn from(secret: &str) -> Self {
        Self(secret.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_debug_is_redacted() {
        let secret = SecretKey::new("very-secret-value");
        let debug = format!("{secret:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
        assert_eq!(secret.expose_secret(), "very-secret-value");
    }
}
