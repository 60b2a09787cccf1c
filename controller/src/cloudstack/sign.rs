//! CloudStack request signatures, both sides: [`sign`] for the controller's own calls and
//! [`verify`] for the controller's API endpoint, which must accept whatever a CloudStack client
//! (the UI, `cs`, cloudmonkey, the Go/Python SDKs) signs.
//!
//! The algorithm is `ApiServer.verifyRequest` (cks-reference §7.1):
//!
//! 1. take every decoded request parameter except `signature`, first value per name;
//! 2. sort the names as received, case-sensitively (Java `Collections.sort`: UTF-16 code units);
//! 3. write `name=encode(value)`, where `encode` is Java's `URLEncoder.encode(value, "UTF-8")`
//!    with `+` replaced by `%20` (names are not encoded);
//! 4. join with `&` and lower-case the whole string, percent-escapes included;
//! 5. HMAC-SHA1 with the secret key, standard base64 with padding.
//!
//! With `signatureVersion=3` the request also carries `expires` (`yyyy-MM-dd'T'HH:mm:ssZ`, e.g.
//! `2026-11-24T13:53:25+0000`), and the server refuses it once that time has passed.
//!
//! # Two canonical encodings
//!
//! Java's `URLEncoder` keeps only `A-Za-z0-9.-*_` and writes `~` as `%7E`. The Python `cs`
//! client encodes with `quote(value, safe="*")`, which also keeps `~`. For a value containing
//! `~` the two clients therefore sign different strings. A real CloudStack accepts only the Java
//! form, but our endpoint's promise is that `cs` works unchanged, so [`verify`] accepts a
//! signature over either form. That is no weaker: both strings are derived from the same
//! decoded parameters, so a signature over one cannot be replayed with other parameters. [`sign`]
//! always produces the Java form, which both a real CloudStack and our endpoint accept.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

/// Name of the signature parameter (matched case-insensitively, as CloudStack does).
pub const SIGNATURE: &str = "signature";
/// Name of the API key parameter (matched case-insensitively).
pub const API_KEY: &str = "apikey";
/// Name of the signature version parameter (matched case-insensitively).
pub const SIGNATURE_VERSION: &str = "signatureversion";
/// Name of the expiry parameter (matched case-insensitively).
pub const EXPIRES: &str = "expires";
/// The signature version that carries `expires`.
pub const VERSION_3: &str = "3";
/// How long CloudStack accepts an `expires` in the future when
/// `enforce.post.requests.and.timestamps` is on.
pub const ENFORCED_MAX_VALIDITY: Duration = Duration::from_secs(15 * 60);

/// `yyyy-MM-dd'T'HH:mm:ssZ` (Java `SimpleDateFormat`), e.g. `2026-11-24T13:53:25+0000`.
const EXPIRES_FORMAT: &[FormatItem<'static>] = format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory][offset_minute]"
);
/// The same with a colon in the offset (`+00:00`), which `SimpleDateFormat` also parses.
const EXPIRES_FORMAT_COLON: &[FormatItem<'static>] = format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
);

/// How parameter values are percent-encoded in the string to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Java `URLEncoder` with `+` → `%20`: `A-Za-z0-9.-*_` kept. What CloudStack computes.
    Java,
    /// Python `quote(value, safe="*")`: like Java but `~` is kept. What the `cs` client signs.
    Python,
}

/// A request signature did not verify. Messages never contain the secret or the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `apiKey` parameter.
    #[error("request has no apiKey parameter")]
    MissingApiKey,
    /// No `signature` parameter.
    #[error("request has no signature parameter")]
    MissingSignature,
    /// `signatureVersion=3` without `expires`.
    #[error("request has signatureVersion=3 but no expires parameter")]
    MissingExpires,
    /// `expires` is not `yyyy-MM-dd'T'HH:mm:ssZ`.
    #[error("request expires parameter {value:?} is not yyyy-MM-ddTHH:mm:ss+hhmm")]
    InvalidExpires {
        /// The value as received.
        value: String,
    },
    /// `expires` is in the past.
    #[error("request expired at {expires}")]
    Expired {
        /// The value as received.
        expires: String,
    },
    /// `expires` is further in the future than the policy allows.
    #[error("request expires at {expires}, more than {max_validity:?} from now")]
    ExpiresTooFar {
        /// The value as received.
        expires: String,
        /// The policy's limit.
        max_validity: Duration,
    },
    /// The policy requires `signatureVersion=3` and `expires`.
    #[error("request is not signed with signatureVersion=3 and expires")]
    ExpiryRequired,
    /// The signature does not match the parameters and the secret key.
    #[error("request signature does not match")]
    Mismatch,
}

/// Checks beyond the signature itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyPolicy {
    /// Refuse requests without `signatureVersion=3` + `expires`.
    pub require_expires: bool,
    /// Refuse an `expires` further than this in the future.
    pub max_validity: Option<Duration>,
}

// === impl VerifyPolicy ===

impl VerifyPolicy {
    /// CloudStack with `enforce.post.requests.and.timestamps=true`: `expires` required and at
    /// most 15 minutes ahead. (The POST-only part of that setting is the endpoint's business.)
    pub const ENFORCED: Self = Self {
        require_expires: true,
        max_validity: Some(ENFORCED_MAX_VALIDITY),
    };
}

/// Percent-encodes one value (upper-case hex, as both encoders write it before lower-casing).
pub fn encode_value(value: &str, encoding: Encoding) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        let kept = byte.is_ascii_alphanumeric()
            || matches!(byte, b'.' | b'-' | b'*' | b'_')
            || (encoding == Encoding::Python && byte == b'~');
        if kept {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Java's `String.compareTo`: UTF-16 code units, which differs from byte order only for
/// names mixing supplementary characters with U+E000..U+FFFF.
fn java_order(a: &str, b: &str) -> Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The lower-cased string CloudStack signs, built from decoded parameters as received.
///
/// `signature` is skipped (any case); of repeated names the first value counts, as the Java
/// servlet's parameter map gives CloudStack only `values[0]`.
pub fn string_to_sign<K: AsRef<str>, V: AsRef<str>>(
    params: &[(K, V)],
    encoding: Encoding,
) -> String {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(params.len());
    for (name, value) in params {
        let name = name.as_ref();
        if name.eq_ignore_ascii_case(SIGNATURE) || pairs.iter().any(|(n, _)| *n == name) {
            continue;
        }
        pairs.push((name, value.as_ref()));
    }
    pairs.sort_by(|a, b| java_order(a.0, b.0));
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(&encode_value(value, encoding));
    }
    out.to_lowercase()
}

fn mac(secret: &str, message: &str) -> Hmac<Sha1> {
    // HMAC takes keys of any length (an empty one too), so `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    mac
}

/// HMAC-SHA1 of `message` keyed by `secret`, standard base64 with padding.
pub fn hmac_sha1_base64(secret: &str, message: &str) -> String {
    STANDARD.encode(mac(secret, message).finalize().into_bytes())
}

/// Signs decoded parameters as CloudStack verifies them (Java encoding); the result is the
/// `signature` parameter's value before URL encoding.
pub fn sign<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)], secret: &str) -> String {
    hmac_sha1_base64(secret, &string_to_sign(params, Encoding::Java))
}

/// The first value of parameter `name`, matched case-insensitively (CloudStack matches the
/// authentication parameters with `equalsIgnoreCase`).
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Formats an `expires` value: `2026-11-24T13:53:25+0000` (in UTC).
pub fn format_expires(at: OffsetDateTime) -> String {
    // Every field of the format exists in an OffsetDateTime, so formatting cannot fail.
    at.to_offset(time::UtcOffset::UTC)
        .format(EXPIRES_FORMAT)
        .unwrap_or_default()
}

/// Parses an `expires` value (`+hhmm` offsets, and `+hh:mm` as `SimpleDateFormat` also takes).
pub fn parse_expires(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, EXPIRES_FORMAT)
        .or_else(|_| OffsetDateTime::parse(value, EXPIRES_FORMAT_COLON))
        .ok()
}

/// Verifies a request as CloudStack's `ApiServer.verifyRequest` does (default policy: `expires`
/// checked when `signatureVersion=3`, no limit on how far ahead).
///
/// `params` are the decoded query and form parameters in the order received, `signature`
/// included; `secret` is the secret key of the user owning the request's `apiKey` (see
/// [`param`] to find it); `now` is the current time.
///
/// # Errors
/// [`SignatureError`] naming the first check that failed.
pub fn verify(
    params: &[(String, String)],
    secret: &str,
    now: OffsetDateTime,
) -> Result<(), SignatureError> {
    verify_with(params, secret, now, VerifyPolicy::default())
}

/// [`verify`] with an explicit [`VerifyPolicy`].
///
/// # Errors
/// [`SignatureError`] naming the first check that failed.
pub fn verify_with(
    params: &[(String, String)],
    secret: &str,
    now: OffsetDateTime,
    policy: VerifyPolicy,
) -> Result<(), SignatureError> {
    let signature = param(params, SIGNATURE).ok_or(SignatureError::MissingSignature)?;
    param(params, API_KEY).ok_or(SignatureError::MissingApiKey)?;
    if param(params, SIGNATURE_VERSION) == Some(VERSION_3) {
        let expires = param(params, EXPIRES).ok_or(SignatureError::MissingExpires)?;
        let at = parse_expires(expires).ok_or_else(|| SignatureError::InvalidExpires {
            value: expires.to_owned(),
        })?;
        if at < now {
            return Err(SignatureError::Expired {
                expires: expires.to_owned(),
            });
        }
        if let Some(max_validity) = policy.max_validity
            && at - now > max_validity
        {
            return Err(SignatureError::ExpiresTooFar {
                expires: expires.to_owned(),
                max_validity,
            });
        }
    } else if policy.require_expires {
        return Err(SignatureError::ExpiryRequired);
    }
    let matches = |encoding| {
        let expected = hmac_sha1_base64(secret, &string_to_sign(params, encoding));
        constant_time_eq(expected.as_bytes(), signature.as_bytes())
    };
    // The two encodings differ only for `~`; skip the second HMAC when no value has one.
    let has_tilde = params
        .iter()
        .any(|(n, v)| !n.eq_ignore_ascii_case(SIGNATURE) && v.contains('~'));
    // Evaluate both without short-circuit so the time taken does not say which form matched.
    let java = matches(Encoding::Java);
    let python = has_tilde && matches(Encoding::Python);
    if java | python {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Compares without an early exit on the first differing byte. The length is not secret
/// (a base64 HMAC-SHA1 is always 28 characters).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const VECTOR_EXPIRES: &str = "2026-11-24T13:53:25+0000";

    fn before_vector_expiry() -> OffsetDateTime {
        parse_expires("2026-11-24T13:43:25+0000").unwrap()
    }

    /// `cs listZones` as captured on the wire (platform-notes.md).
    fn list_zones_vector() -> Vec<(String, String)> {
        owned(&[
            ("command", "listZones"),
            ("apiKey", "test-key"),
            ("response", "json"),
            ("signatureVersion", "3"),
            ("expires", VECTOR_EXPIRES),
            ("signature", "Zf50WYvfT+587B9nDdLgruIlehY="),
        ])
    }

    /// `cs listVirtualMachines name='web 1' tags[0].key=role tags[0].value='a~b*c'`.
    fn list_vms_vector() -> Vec<(String, String)> {
        owned(&[
            ("name", "web 1"),
            ("tags[0].key", "role"),
            ("tags[0].value", "a~b*c"),
            ("command", "listVirtualMachines"),
            ("apiKey", "test-key"),
            ("response", "json"),
            ("signatureVersion", "3"),
            ("expires", VECTOR_EXPIRES),
            ("signature", "TB5HRAF4DIG1HDcWIPbZ/Lf8AUs="),
        ])
    }

    #[test]
    fn list_zones_vector_signs_and_verifies() {
        let params = list_zones_vector();
        assert_eq!(
            string_to_sign(&params, Encoding::Java),
            "apikey=test-key&command=listzones&expires=2026-11-24t13%3a53%3a25%2b0000\
             &response=json&signatureversion=3"
        );
        assert_eq!(sign(&params, "test-secret"), "Zf50WYvfT+587B9nDdLgruIlehY=");
        assert_eq!(
            verify(&params, "test-secret", before_vector_expiry()),
            Ok(())
        );
    }

    #[test]
    fn list_vms_vector_verifies_through_the_python_form_only() {
        let params = list_vms_vector();
        assert_eq!(
            string_to_sign(&params, Encoding::Python),
            "apikey=test-key&command=listvirtualmachines&expires=2026-11-24t13%3a53%3a25%2b0000\
             &name=web%201&response=json&signatureversion=3&tags[0].key=role&tags[0].value=a~b*c"
        );
        let java = string_to_sign(&params, Encoding::Java);
        assert!(java.ends_with("&tags[0].value=a%7eb*c"), "{java}");
        // Our signer writes the Java form, which a real CloudStack requires...
        assert_ne!(sign(&params, "test-secret"), "TB5HRAF4DIG1HDcWIPbZ/Lf8AUs=");
        // ...and the verifier accepts what `cs` sent.
        assert_eq!(
            verify(&params, "test-secret", before_vector_expiry()),
            Ok(())
        );
    }

    #[test]
    fn our_own_signature_of_a_tilde_value_verifies() {
        let mut params = list_vms_vector();
        params.pop();
        let signature = sign(&params, "s3cret");
        params.push(("signature".into(), signature));
        assert_eq!(verify(&params, "s3cret", before_vector_expiry()), Ok(()));
    }

    #[test]
    fn wrong_secret_or_tampered_parameter_is_a_mismatch() {
        let params = list_zones_vector();
        assert_eq!(
            verify(&params, "wrong-secret", before_vector_expiry()),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = list_vms_vector();
        tampered[0].1 = "web 2".into();
        assert_eq!(
            verify(&tampered, "test-secret", before_vector_expiry()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn missing_authentication_parameters_are_refused_first() {
        let mut no_signature = list_zones_vector();
        no_signature.retain(|(k, _)| k != "signature");
        assert_eq!(
            verify(&no_signature, "test-secret", before_vector_expiry()),
            Err(SignatureError::MissingSignature)
        );
        let mut no_key = list_zones_vector();
        no_key.retain(|(k, _)| k != "apiKey");
        assert_eq!(
            verify(&no_key, "test-secret", before_vector_expiry()),
            Err(SignatureError::MissingApiKey)
        );
        let mut no_expires = list_zones_vector();
        no_expires.retain(|(k, _)| k != "expires");
        assert_eq!(
            verify(&no_expires, "test-secret", before_vector_expiry()),
            Err(SignatureError::MissingExpires)
        );
    }

    #[test]
    fn expired_and_malformed_expiry_are_refused() {
        let params = list_zones_vector();
        let after = parse_expires("2026-11-24T13:53:26+0000").unwrap();
        assert_eq!(
            verify(&params, "test-secret", after),
            Err(SignatureError::Expired {
                expires: VECTOR_EXPIRES.into()
            })
        );
        // Exactly at the expiry instant it is still valid (Java: `expiresTS.before(now)`).
        let at = parse_expires(VECTOR_EXPIRES).unwrap();
        assert_eq!(verify(&params, "test-secret", at), Ok(()));
        let mut malformed = list_zones_vector();
        malformed[4].1 = "2026-11-24 13:53:25".into();
        assert!(matches!(
            verify(&malformed, "test-secret", at),
            Err(SignatureError::InvalidExpires { .. })
        ));
    }

    #[test]
    fn without_signature_version_3_expires_is_not_checked() {
        // Legacy signatures (no signatureVersion) carry no expiry; CloudStack accepts them.
        let mut params = owned(&[("command", "listZones"), ("apikey", "k")]);
        let signature = sign(&params, "s");
        params.push(("signature".into(), signature));
        assert_eq!(verify(&params, "s", OffsetDateTime::now_utc()), Ok(()));
        assert_eq!(
            verify_with(
                &params,
                "s",
                OffsetDateTime::now_utc(),
                VerifyPolicy::ENFORCED
            ),
            Err(SignatureError::ExpiryRequired)
        );
    }

    #[test]
    fn enforced_policy_refuses_far_expiry() {
        let params = list_zones_vector();
        let long_before = parse_expires("2026-11-24T12:00:00+0000").unwrap();
        assert!(matches!(
            verify_with(&params, "test-secret", long_before, VerifyPolicy::ENFORCED),
            Err(SignatureError::ExpiresTooFar { .. })
        ));
        assert_eq!(
            verify_with(
                &params,
                "test-secret",
                before_vector_expiry(),
                VerifyPolicy::ENFORCED
            ),
            Ok(())
        );
    }

    #[test]
    fn authentication_parameter_names_match_in_any_case() {
        let mut params = owned(&[
            ("COMMAND", "listZones"),
            ("APIKEY", "k"),
            ("SignatureVersion", "3"),
            ("Expires", VECTOR_EXPIRES),
        ]);
        let signature = sign(&params, "s");
        params.push(("Signature".into(), signature));
        assert_eq!(verify(&params, "s", before_vector_expiry()), Ok(()));
        assert_eq!(param(&params, "apikey"), Some("k"));
    }

    #[test]
    fn java_encoding_matches_url_encoder_with_space_as_percent_20() {
        assert_eq!(
            encode_value("a b+c/d:e~f*g_h.i-j=k&l", Encoding::Java),
            "a%20b%2Bc%2Fd%3Ae%7Ef*g_h.i-j%3Dk%26l"
        );
        assert_eq!(encode_value("~", Encoding::Python), "~");
        assert_eq!(encode_value("é€", Encoding::Java), "%C3%A9%E2%82%AC");
        assert_eq!(encode_value("", Encoding::Java), "");
    }

    #[test]
    fn hex_escapes_are_lower_cased_in_the_signed_string() {
        let params = owned(&[("name", "A+B é")]);
        assert_eq!(
            string_to_sign(&params, Encoding::Java),
            "name=a%2bb%20%c3%a9"
        );
    }

    #[test]
    fn names_sort_case_sensitively_and_are_not_encoded() {
        let params = owned(&[
            ("b", "1"),
            ("Z", "2"),
            ("a", "3"),
            ("tags[0].value", "v"),
            ("tags[0].key", "k"),
        ]);
        assert_eq!(
            string_to_sign(&params, Encoding::Java),
            "z=2&a=3&b=1&tags[0].key=k&tags[0].value=v"
        );
    }

    #[test]
    fn repeated_names_sign_their_first_value_and_signature_is_skipped() {
        let params = owned(&[
            ("a", "1"),
            ("a", "2"),
            ("SIGNATURE", "x"),
            ("signature", "y"),
        ]);
        assert_eq!(string_to_sign(&params, Encoding::Java), "a=1");
    }

    #[test]
    fn empty_values_are_signed_as_name_equals() {
        let params = owned(&[("keyword", ""), ("command", "listZones")]);
        assert_eq!(
            string_to_sign(&params, Encoding::Java),
            "command=listzones&keyword="
        );
    }

    #[test]
    fn expires_formats_in_utc_and_round_trips() {
        let at = parse_expires("2026-11-24T15:53:25+0200").unwrap();
        assert_eq!(format_expires(at), VECTOR_EXPIRES);
        assert_eq!(
            parse_expires("2026-11-24T13:53:25+00:00"),
            parse_expires(VECTOR_EXPIRES)
        );
        assert_eq!(parse_expires("2026-11-24T13:53:25Z"), None);
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
