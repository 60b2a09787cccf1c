//! CloudStack request signing, as `ApiServer.verifyRequest` checks it.
//!
//! The server takes every decoded request parameter except `signature`, sorts them by name
//! case-sensitively, joins `name=encode(value)` with `&`, lower-cases the whole string, computes
//! HMAC-SHA1 with the user's secret key and compares the standard base64 of it with the
//! `signature` parameter. `encode` is Java's `URLEncoder.encode(value, "UTF-8")` with `+` replaced
//! by `%20`.
//!
//! The Python `cs` client encodes with `quote(value, safe="*")`, which keeps `~` where Java
//! writes `%7E`. Both canonical forms are accepted so that the simulator accepts what `cs` sends
//! (a real CloudStack would refuse a `cs` request whose values contain `~`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// How parameter values are percent-encoded in the string to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Java `URLEncoder` semantics (`A-Za-z0-9.-*_` kept, space → `%20`), what CloudStack uses.
    Java,
    /// Python `quote(value, safe="*")` (also keeps `~`), what the `cs` client uses.
    Python,
}

/// Percent-encodes one value with the given encoding (upper-case hex, as both encoders write).
pub fn encode_value(value: &str, encoding: Encoding) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        let kept = byte.is_ascii_alphanumeric()
            || matches!(byte, b'.' | b'-' | b'*' | b'_')
            || (encoding == Encoding::Python && byte == b'~');
        if kept {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Builds the lower-cased string to sign from decoded parameters (`signature` is skipped).
pub fn string_to_sign(params: &[(String, String)], encoding: Encoding) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("signature"))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    // Java's `Collections.sort` on strings: code-unit order, which is byte order for ASCII.
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={}", encode_value(value, encoding)))
        .collect::<Vec<_>>()
        .join("&")
        .to_lowercase()
}

/// HMAC-SHA1 of `message` keyed by `secret`, standard base64 with padding.
pub fn hmac_sha1_base64(secret: &str, message: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(message.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Signs decoded parameters the way CloudStack verifies them (Java encoding).
pub fn sign(params: &[(String, String)], secret: &str) -> String {
    hmac_sha1_base64(secret, &string_to_sign(params, Encoding::Java))
}

/// True when `signature` matches the parameters under either accepted encoding.
pub fn verify(params: &[(String, String)], secret: &str, signature: &str) -> bool {
    [Encoding::Java, Encoding::Python].iter().any(|encoding| {
        let expected = hmac_sha1_base64(secret, &string_to_sign(params, *encoding));
        constant_time_eq(expected.as_bytes(), signature.as_bytes())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Builds a complete signed parameter list for a client request: adds `command`, `apikey`,
/// `response=json`, `signatureversion=3`, `expires` (when given) and `signature`.
///
/// Parameter names are sent lower-case, as cks-reference §7.1 recommends for clients.
pub fn signed_params(
    command: &str,
    args: &[(&str, &str)],
    api_key: &str,
    secret: &str,
    expires: Option<&str>,
) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    params.push(("command".into(), command.into()));
    params.push(("apikey".into(), api_key.into()));
    params.push(("response".into(), "json".into()));
    if let Some(expires) = expires {
        params.push(("signatureversion".into(), "3".into()));
        params.push(("expires".into(), expires.into()));
    }
    let signature = sign(&params, secret);
    params.push(("signature".into(), signature));
    params
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

    #[test]
    fn cs_list_zones_vector_verifies() {
        // Captured from `cs listZones` (platform-notes.md, "CloudStack request signing").
        let params = owned(&[
            ("command", "listZones"),
            ("apiKey", "test-key"),
            ("response", "json"),
            ("signatureVersion", "3"),
            ("expires", "2026-11-24T13:53:25+0000"),
            ("signature", "Zf50WYvfT+587B9nDdLgruIlehY="),
        ]);
        assert_eq!(
            string_to_sign(&params, Encoding::Java),
            "apikey=test-key&command=listzones&expires=2026-11-24t13%3a53%3a25%2b0000\
             &response=json&signatureversion=3"
        );
        assert_eq!(sign(&params, "test-secret"), "Zf50WYvfT+587B9nDdLgruIlehY=");
        assert!(verify(
            &params,
            "test-secret",
            "Zf50WYvfT+587B9nDdLgruIlehY="
        ));
        assert!(!verify(
            &params,
            "wrong-secret",
            "Zf50WYvfT+587B9nDdLgruIlehY="
        ));
    }

    #[test]
    fn cs_vector_with_space_star_and_tilde_verifies_through_python_encoding() {
        let params = owned(&[
            ("name", "web 1"),
            ("tags[0].key", "role"),
            ("tags[0].value", "a~b*c"),
            ("command", "listVirtualMachines"),
            ("apiKey", "test-key"),
            ("response", "json"),
        ]);
        let python = string_to_sign(&params, Encoding::Python);
        assert_eq!(
            python,
            "apikey=test-key&command=listvirtualmachines&name=web%201&response=json\
             &tags[0].key=role&tags[0].value=a~b*c"
        );
        let java = string_to_sign(&params, Encoding::Java);
        assert!(java.ends_with("tags[0].value=a%7eb*c"), "{java}");
        let cs_signature = hmac_sha1_base64("test-secret", &python);
        assert!(verify(&params, "test-secret", &cs_signature));
    }

    #[test]
    fn java_encoding_matches_url_encoder() {
        assert_eq!(
            encode_value("a b+c/d:e~f*g_h.i-j", Encoding::Java),
            "a%20b%2Bc%2Fd%3Ae%7Ef*g_h.i-j"
        );
        assert_eq!(encode_value("é", Encoding::Java), "%C3%A9");
    }

    #[test]
    fn sort_is_case_sensitive() {
        let params = owned(&[("b", "1"), ("Z", "2"), ("a", "3")]);
        assert_eq!(string_to_sign(&params, Encoding::Java), "z=2&a=3&b=1");
    }

    #[test]
    fn signed_params_round_trip() {
        let params = signed_params("listZones", &[("name", "x y")], "k", "s", None);
        let signature = params.last().map(|(_, v)| v.clone()).unwrap_or_default();
        assert!(verify(&params, "s", &signature));
    }
}
