//! Request parameters: kept as received (the signature covers them exactly) and looked up by
//! lower-cased name, as CloudStack matches parameter names.

use std::collections::BTreeMap;

use super::error::ApiError;

/// The parameters of one request.
#[derive(Debug, Clone, Default)]
pub struct Params {
    /// As received, decoded, in order.
    raw: Vec<(String, String)>,
    /// Lower-cased name → value (the last one wins, as in CloudStack).
    by_name: BTreeMap<String, String>,
    /// The command, for error texts.
    command: String,
}

/// Parses an `application/x-www-form-urlencoded` string (a query string or a POST body),
/// leniently: malformed escapes are kept as they are. For requests, use [`parse_request`].
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The media type CloudStack (Jetty) reads a `POST` body as parameters for.
const FORM: &str = "application/x-www-form-urlencoded";

/// Most parameters one request may carry (CloudStack's commands take a few dozen at most; map
/// parameters such as `nodeofferings[i].*` a few per node type).
pub const MAX_PARAMS: usize = 512;

/// A request whose parameters cannot be read unambiguously. Every variant is refused before
/// anything else happens: the signature check and the command must see one and the same
/// parameter set, and CloudStack must see the same one when the request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A name appears twice (in any case, in the query or the body): the signature covers the
    /// first value and a command would act on another.
    #[error("parameter {0} is repeated")]
    Repeated(String),
    /// A `%` escape that is not two hex digits, or bytes that are not UTF-8 once decoded.
    #[error("parameter {0} is not valid percent-encoded UTF-8")]
    Malformed(String),
    /// A `POST` body that is not a form: CloudStack's API takes no other.
    #[error("a request body of type {0:?} is not accepted; send application/x-www-form-urlencoded")]
    UnsupportedBody(String),
    /// More than [`MAX_PARAMS`] parameters.
    #[error("more than {MAX_PARAMS} parameters")]
    TooMany,
}

// === impl RequestError ===

impl RequestError {
    /// The API error a client sees (431, as CloudStack refuses bad parameters).
    pub fn to_api_error(&self) -> ApiError {
        ApiError::param(format!("Unable to execute API command: {self}"))
    }
}

/// Whether a `Content-Type` is a form, compared as HTTP says: the media type is
/// case-insensitive and may carry parameters (`; charset=UTF-8`).
pub fn is_form_content_type(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM))
}

/// Reads one request's parameters: the query string and, for a form `POST`, the body, in that
/// order, strictly decoded, with no name repeated (case-insensitively). The one parameter set
/// that both the signature check and the command use.
///
/// # Errors
/// [`RequestError`] for anything that two readers could read differently.
pub fn parse_request(
    query: Option<&str>,
    post_body: Option<(Option<&str>, &[u8])>,
) -> Result<Vec<(String, String)>, RequestError> {
    let mut pairs = Vec::new();
    parse_strict(query.unwrap_or_default().as_bytes(), &mut pairs)?;
    if let Some((content_type, body)) = post_body {
        match content_type {
            Some(ct) if is_form_content_type(ct) => parse_strict(body, &mut pairs)?,
            _ if body.is_empty() => {}
            other => {
                return Err(RequestError::UnsupportedBody(
                    other.unwrap_or("none").chars().take(64).collect(),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(pairs.len());
    for (name, _) in &pairs {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(RequestError::Repeated(printable(name)));
        }
    }
    Ok(pairs)
}

fn parse_strict(text: &[u8], out: &mut Vec<(String, String)>) -> Result<(), RequestError> {
    for field in text.split(|b| *b == b'&').filter(|f| !f.is_empty()) {
        let (name, value) = match field.iter().position(|b| *b == b'=') {
            Some(at) => (&field[..at], &field[at + 1..]),
            None => (field, &b""[..]),
        };
        let name = decode_strict(name)
            .ok_or_else(|| RequestError::Malformed(printable(&String::from_utf8_lossy(name))))?;
        let value =
            decode_strict(value).ok_or_else(|| RequestError::Malformed(printable(&name)))?;
        if out.len() >= MAX_PARAMS {
            return Err(RequestError::TooMany);
        }
        out.push((name, value));
    }
    Ok(())
}

/// `+` is a space; every `%` must start two hex digits; the result must be UTF-8.
fn decode_strict(raw: &[u8]) -> Option<String> {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => bytes.push(other),
        }
        i += 1;
    }
    String::from_utf8(bytes).ok()
}

/// A name as it may appear in an error text: short, printable.
fn printable(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

// === impl Params ===

impl Params {
    /// Parameters from decoded pairs.
    pub fn new(raw: Vec<(String, String)>) -> Self {
        let by_name: BTreeMap<String, String> = raw
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let command = by_name.get("command").cloned().unwrap_or_default();
        Params {
            raw,
            by_name,
            command,
        }
    }

    /// Parameters built in code (tests, the CLI).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The pairs as received.
    pub fn raw(&self) -> &[(String, String)] {
        &self.raw
    }

    /// The command name as sent (`createKubernetesCluster`).
    pub fn command(&self) -> &str {
        &self.command
    }

    /// A parameter; empty values count as absent (CloudStack ignores them).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A list parameter (`nodeids=a,b,c`), empty items dropped; `None` when absent.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
    }

    /// A map parameter as CloudStack sends it (`nodeofferings[0].node=worker&
    /// nodeofferings[0].offering=<id>`): one entry per index, keys lower-cased, in index order.
    pub fn map(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        let prefix = format!("{}[", name.to_ascii_lowercase());
        let mut entries: BTreeMap<u32, BTreeMap<String, String>> = BTreeMap::new();
        for (key, value) in &self.by_name {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let Some((index, field)) = rest.split_once("].") else {
                continue;
            };
            let Ok(index) = index.parse::<u32>() else {
                continue;
            };
            entries
                .entry(index)
                .or_default()
                .insert(field.to_string(), value.clone());
        }
        entries.into_values().collect()
    }

    /// A required parameter.
    ///
    /// # Errors
    /// 431 with CloudStack's "missing parameter" text.
    pub fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::missing(&self.command, &[name]))
    }

    /// Checks several required parameters at once, naming every missing one.
    ///
    /// # Errors
    /// 431 listing the missing names.
    pub fn require_all(&self, names: &[&str]) -> Result<(), ApiError> {
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| self.get(n).is_none())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::missing(&self.command, &missing))
        }
    }

    /// A whole-number parameter.
    ///
    /// # Errors
    /// 431 when it is not a number.
    pub fn number(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                ApiError::param(format!(
                    "Unable to execute API command {} due to invalid value. Invalid parameter {} value={} due to incorrect long value format, or entity does not exist or due to incorrect parameter annotation for the field in api cmd class.",
                    self.command.to_lowercase(),
                    name,
                    v
                ))
            }),
        }
    }

    /// A boolean parameter (`true`/`false`, any case).
    ///
    /// # Errors
    /// 431 for anything else.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(ApiError::param(format!(
                "Unable to execute API command {} due to invalid value {other} for parameter {name}",
                self.command.to_lowercase()
            ))),
        }
    }

    /// The `page` / `pagesize` pair, validated as CloudStack does (`default.page.size` 500).
    ///
    /// # Errors
    /// 431 for CloudStack's paging rule violations.
    pub fn paging(&self) -> Result<Paging, ApiError> {
        const DEFAULT_PAGE_SIZE: i64 = 500;
        match (self.number("page")?, self.number("pagesize")?) {
            (None, Some(-1)) => Ok(Paging {
                offset: 0,
                limit: usize::MAX,
            }),
            (Some(_), Some(-1)) => Err(ApiError::param(
                "Can't specify page parameter when pagesize is -1 (Unlimited)",
            )),
            (None, Some(_)) => Err(ApiError::param(
                "\"page\" parameter is required when \"pagesize\" is specified",
            )),
            (_, Some(size)) if size > DEFAULT_PAGE_SIZE => Err(ApiError::param(format!(
                "Page size can't exceed max allowed page size value: {DEFAULT_PAGE_SIZE}"
            ))),
            (_, Some(size)) if size < 1 => {
                Err(ApiError::param(format!("Invalid page size: {size}")))
            }
            (Some(page), _) if page < 1 => {
                Err(ApiError::param(format!("Invalid page number: {page}")))
            }
            (page, size) => {
                let size = size.unwrap_or(DEFAULT_PAGE_SIZE) as usize;
                let page = page.unwrap_or(1) as usize;
                Ok(Paging {
                    offset: (page - 1).saturating_mul(size),
                    limit: size,
                })
            }
        }
    }
}

/// A page of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    /// Items to skip.
    pub offset: usize,
    /// Items to return.
    pub limit: usize,
}

impl Paging {
    /// The items of this page.
    pub fn slice<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let start = self.offset.min(items.len());
        let end = self.offset.saturating_add(self.limit).min(items.len());
        &items[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_query_then_form_body() {
        let pairs = parse_request(
            Some("command=listZones&apiKey=k%2B1"),
            Some((
                Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8"),
                b"name=a+b&signature=s%3D",
            )),
        )
        .expect("parsed");
        assert_eq!(
            pairs,
            vec![
                ("command".into(), "listZones".into()),
                ("apiKey".into(), "k+1".into()),
                ("name".into(), "a b".into()),
                ("signature".into(), "s=".into()),
            ]
        );
    }

    #[test]
    fn a_repeated_name_is_refused_in_any_case_and_anywhere() {
        let twice = |query: &str, body: &[u8]| {
            parse_request(Some(query), Some((Some(FORM), body))).expect_err("repeated")
        };
        assert_eq!(
            twice("command=listZones&command=deleteX", b""),
            RequestError::Repeated("command".into())
        );
        assert_eq!(
            twice("command=listZones&COMMAND=deleteX", b""),
            RequestError::Repeated("COMMAND".into())
        );
        assert_eq!(twice("id=1", b"Id=2"), RequestError::Repeated("Id".into()));
        let err = twice("id=1&id=2", b"").to_api_error();
        assert_eq!(err.code, 431);
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused() {
        for query in ["a=%zz", "a=%4", "a=%ff%fe", "%=1"] {
            assert!(
                matches!(
                    parse_request(Some(query), None),
                    Err(RequestError::Malformed(_))
                ),
                "{query}"
            );
        }
        assert_eq!(
            parse_request(Some("a&b=&=c"), None).expect("lenient shapes"),
            vec![
                ("a".into(), String::new()),
                ("b".into(), String::new()),
                (String::new(), "c".into()),
            ]
        );
    }

    #[test]
    fn a_post_body_of_another_type_is_refused_unless_empty() {
        assert_eq!(
            parse_request(Some("a=1"), Some((Some("application/json"), b"{}"))),
            Err(RequestError::UnsupportedBody("application/json".into()))
        );
        assert_eq!(
            parse_request(Some("a=1"), Some((None, b"a=2"))),
            Err(RequestError::UnsupportedBody("none".into()))
        );
        assert_eq!(
            parse_request(Some("a=1"), Some((Some("text/plain"), b""))).expect("empty"),
            vec![("a".into(), "1".into())]
        );
    }

    #[test]
    fn too_many_parameters_are_refused() {
        let query: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=1")).collect();
        assert_eq!(
            parse_request(Some(&query.join("&")), None),
            Err(RequestError::TooMany)
        );
    }

    #[test]
    fn names_are_case_insensitive_and_empty_values_absent() {
        let p = Params::from_pairs(&[("command", "listX"), ("ZoneId", "z1"), ("name", "")]);
        assert_eq!(p.get("zoneid"), Some("z1"));
        assert_eq!(p.get("name"), None);
        let err = p.require_all(&["name", "size"]).expect_err("missing");
        assert_eq!(err.code, 431);
        assert!(
            err.text.ends_with("missing parameter name, size"),
            "{}",
            err.text
        );
    }

    #[test]
    fn a_page_slices_within_bounds() {
        let items = [1, 2, 3, 4, 5];
        let page = |offset, limit| Paging { offset, limit }.slice(&items).to_vec();
        assert_eq!(page(0, 2), vec![1, 2]);
        assert_eq!(page(4, 2), vec![5]);
        assert_eq!(page(9, 2), Vec::<i32>::new());
        assert_eq!(page(1, usize::MAX), vec![2, 3, 4, 5]);
    }

    #[test]
    fn paging_follows_cloudstack_rules() {
        let ok = Params::from_pairs(&[("page", "2"), ("pagesize", "10")]);
        assert_eq!(
            ok.paging().expect("paging"),
            Paging {
                offset: 10,
                limit: 10
            }
        );
        assert!(Params::from_pairs(&[("pagesize", "10")]).paging().is_err());
        assert!(
            Params::from_pairs(&[("page", "1"), ("pagesize", "501")])
                .paging()
                .is_err()
        );
        assert_eq!(
            Params::from_pairs(&[("pagesize", "-1")])
                .paging()
                .expect("unlimited")
                .limit,
            usize::MAX
        );
    }
}
