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

/// Parses an `application/x-www-form-urlencoded` string (a query string or a POST body).
pub fn parse_form(text: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
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
