//! Command-line flags parsed the way cobra/pflag does for kubeadm: `--name=value`,
//! `--name value`, boolean flags without a value, repeated flags, positional arguments, and
//! `unknown flag: --name` for anything not declared.

use std::collections::BTreeMap;

/// The declared flags of one command: name → takes a value?
pub struct FlagSpec<'a> {
    flags: &'a [(&'a str, bool)],
}

/// Parsed flags and positional arguments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Flag → values, in order (booleans get `"true"`).
    pub values: BTreeMap<String, Vec<String>>,
    /// Positional arguments.
    pub args: Vec<String>,
}

impl Parsed {
    /// The last value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether a boolean flag is set.
    pub fn is_set(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }
}

impl<'a> FlagSpec<'a> {
    /// Flags as (name without dashes, takes a value).
    pub fn new(flags: &'a [(&'a str, bool)]) -> Self {
        FlagSpec { flags }
    }

    /// Parses `args`; the error is cobra's message.
    pub fn parse(&self, args: &[String]) -> Result<Parsed, String> {
        let mut parsed = Parsed::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let Some(body) = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-').filter(|b| !b.is_empty()))
            else {
                parsed.args.push(arg.clone());
                continue;
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let Some(&(_, takes_value)) = self.flags.iter().find(|(n, _)| *n == name) else {
                let dashes = if arg.starts_with("--") { "--" } else { "-" };
                return Err(format!("unknown flag: {dashes}{name}"));
            };
            let value = if !takes_value {
                inline.unwrap_or_else(|| "true".into())
            } else if let Some(v) = inline {
                v
            } else if i < args.len() {
                i += 1;
                args[i - 1].clone()
            } else {
                return Err(format!("flag needs an argument: --{name}"));
            };
            parsed
                .values
                .entry(name.to_string())
                .or_default()
                .push(value);
        }
        Ok(parsed)
    }
}

/// Parses a Go duration as kubeadm prints and takes them (`24h0m0s`, `2h`, `90m`, `0`).
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    number.is_empty().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn parses_like_pflag() {
        let spec = FlagSpec::new(&[("token", true), ("control-plane", false), ("v", true)]);
        let p = spec
            .parse(&args(&[
                "10.0.0.1:6443",
                "--token=abc",
                "--control-plane",
                "--v",
                "5",
            ]))
            .unwrap();
        assert_eq!(p.args, ["10.0.0.1:6443"]);
        assert_eq!(p.get("token"), Some("abc"));
        assert!(p.is_set("control-plane"));
        assert_eq!(p.get("v"), Some("5"));
        assert_eq!(
            spec.parse(&args(&["--bogus"])).unwrap_err(),
            "unknown flag: --bogus"
        );
        assert_eq!(
            spec.parse(&args(&["--token"])).unwrap_err(),
            "flag needs an argument: --token"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration_secs("24h0m0s"), Some(86400));
        assert_eq!(parse_duration_secs("2h"), Some(7200));
        assert_eq!(parse_duration_secs("90m"), Some(5400));
        assert_eq!(parse_duration_secs("0"), Some(0));
        assert_eq!(parse_duration_secs("2d"), None);
        assert_eq!(parse_duration_secs("12"), None);
    }
}
