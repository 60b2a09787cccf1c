//! Userdata, applied the way the node template's first-boot tool would: cloud-init
//! (`#cloud-config`) or Ignition (JSON, spec 3.x).
//!
//! Only what a CKS node needs is understood — files to write (cloud-init `write_files`, Ignition
//! `storage.files` with `data:` URLs and `storage.directories`) and starting the agent (cloud-init
//! `runcmd` entries `systemctl restart|start cks-agent.service`, Ignition `systemd.units` enabling
//! `cks-agent.service`; the simulated template ships the agent enabled, so both are satisfied by
//! starting it). Anything else is refused with a message naming the key, rather than ignored: a
//! simulator that silently skipped a directive would let a controller ship userdata that breaks
//! on a real node.
//!
//! Userdata carries secrets (the enrollment token): error messages name keys and paths, never
//! values, and [`FileSpec`]'s `Debug` leaves the content out.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// Which first-boot tool the userdata is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `#cloud-config` YAML.
    CloudConfig,
    /// Ignition JSON.
    Ignition,
}

/// What the userdata asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// The format it came in.
    pub format: Format,
    /// Directories to create (Ignition `storage.directories`).
    pub directories: Vec<DirSpec>,
    /// Files to write, in order.
    pub files: Vec<FileSpec>,
}

/// A directory to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    /// Node path (absolute).
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
}

/// A file to write.
#[derive(Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Node path (absolute, without `..`).
    pub path: PathBuf,
    /// The bytes (secret: never printed).
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Append instead of replacing.
    pub append: bool,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec")
            .field("path", &self.path)
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("append", &self.append)
            .finish()
    }
}

/// Userdata that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum UserdataError {
    /// Neither `#cloud-config` nor Ignition JSON.
    #[error(
        "userdata is neither #cloud-config nor Ignition JSON ({0}); the simulated node template \
         understands only those"
    )]
    UnknownFormat(&'static str),
    /// The document parses but holds something the simulator does not implement or that is
    /// invalid; the reason names the key, never a value.
    #[error("{format:?} userdata refused: {reason}")]
    Refused {
        /// Which format.
        format: Format,
        /// What is wrong.
        reason: String,
    },
    /// A file or directory could not be written under the node's root.
    #[error("failed to write {path:?} from userdata")]
    Write {
        /// The host path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Default mode of written files (cloud-init and Ignition agree).
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Default mode of created directories.
const DEFAULT_DIR_MODE: u32 = 0o755;
/// The unit the template ships.
const AGENT_UNITS: [&str; 2] = ["cks-agent", "cks-agent.service"];

/// Parses userdata (already base64-decoded, as the metadata service hands it to the node).
///
/// # Errors
/// [`UserdataError::UnknownFormat`] or [`UserdataError::Refused`].
pub fn parse(data: &[u8]) -> Result<Provisioning, UserdataError> {
    if data.starts_with(&[0x1f, 0x8b]) {
        return Err(UserdataError::UnknownFormat("gzip-compressed userdata"));
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| UserdataError::UnknownFormat("it is not UTF-8 text"))?;
    let trimmed = text.trim_start();
    if let Some(first) = text.lines().next()
        && first.trim_end() == "#cloud-config"
    {
        parse_cloud_config(text)
    } else if trimmed.starts_with('{') {
        parse_ignition(trimmed)
    } else if trimmed.starts_with("#!") {
        Err(UserdataError::UnknownFormat("a shell script"))
    } else if trimmed.starts_with("Content-Type:") || trimmed.starts_with("MIME-Version:") {
        Err(UserdataError::UnknownFormat("a MIME multipart archive"))
    } else {
        Err(UserdataError::UnknownFormat(
            "the first line is not #cloud-config",
        ))
    }
}

// === cloud-init ===

fn refuse(format: Format, reason: impl Into<String>) -> UserdataError {
    UserdataError::Refused {
        format,
        reason: reason.into(),
    }
}

fn parse_cloud_config(text: &str) -> Result<Provisioning, UserdataError> {
    let cc = |reason: String| refuse(Format::CloudConfig, reason);
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| cc(format!("not valid YAML ({})", location(&e))))?;
    let doc = serde_json::to_value(&yaml)
        .map_err(|_| cc("keys must be strings and values plain YAML".into()))?;
    let doc = match doc {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        _ => return Err(cc("the document must be a mapping".into())),
    };
    only_keys(
        Format::CloudConfig,
        &doc,
        "the document",
        &["write_files", "runcmd"],
    )?;
    let mut files = Vec::new();
    for (i, entry) in list(Format::CloudConfig, doc.get("write_files"), "write_files")?
        .iter()
        .enumerate()
    {
        let what = format!("write_files[{i}]");
        let entry = object(Format::CloudConfig, entry, &what)?;
        only_keys(
            Format::CloudConfig,
            entry,
            &what,
            &[
                "path",
                "content",
                "encoding",
                "permissions",
                "owner",
                "append",
                "defer",
            ],
        )?;
        let path = node_path(
            Format::CloudConfig,
            string(
                Format::CloudConfig,
                entry.get("path"),
                &format!("{what}.path"),
            )?,
        )?;
        let raw = match entry.get("content") {
            None => "",
            Some(v) => string(Format::CloudConfig, Some(v), &format!("{what}.content"))?,
        };
        let content = match entry.get("encoding").map(Value::as_str) {
            None | Some(Some("text/plain")) => raw.as_bytes().to_vec(),
            Some(Some("b64" | "base64")) => STANDARD
                .decode(raw.split_whitespace().collect::<String>())
                .map_err(|_| cc(format!("{what}.content is not valid base64")))?,
            Some(Some(other)) if other.contains("gz") || other.contains("gzip") => {
                return Err(cc(format!(
                    "{what}.encoding {other:?}: compressed content is not supported"
                )));
            }
            Some(_) => {
                return Err(cc(format!(
                    "{what}.encoding must be b64, base64 or text/plain"
                )));
            }
        };
        let mode = match entry.get("permissions") {
            None => DEFAULT_FILE_MODE,
            Some(Value::String(text)) => parse_octal(text)
                .ok_or_else(|| cc(format!("{what}.permissions is not an octal mode")))?,
            Some(_) => {
                return Err(cc(format!(
                    "{what}.permissions must be a quoted octal string such as '0644'"
                )));
            }
        };
        if let Some(owner) = entry.get("owner") {
            let owner = string(Format::CloudConfig, Some(owner), &format!("{what}.owner"))?;
            if !matches!(owner, "root" | "root:root" | "0:0") {
                return Err(cc(format!(
                    "{what}.owner: only root is supported (files are written by the simulator)"
                )));
            }
        }
        let append = boolean(Format::CloudConfig, entry.get("append"), &what)?;
        boolean(Format::CloudConfig, entry.get("defer"), &what)?;
        files.push(FileSpec {
            path,
            content,
            mode,
            append,
        });
    }
    for (i, command) in list(Format::CloudConfig, doc.get("runcmd"), "runcmd")?
        .iter()
        .enumerate()
    {
        let words: Vec<&str> = match command {
            Value::String(line) => line.split_whitespace().collect(),
            Value::Array(items) => items
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or_else(|| cc(format!("runcmd[{i}] must be a string or a list of strings")))?,
            _ => {
                return Err(cc(format!(
                    "runcmd[{i}] must be a string or a list of strings"
                )));
            }
        };
        if !starts_the_agent(&words) {
            return Err(cc(format!(
                "runcmd[{i}]: only `systemctl restart|start cks-agent.service` is supported"
            )));
        }
    }
    Ok(Provisioning {
        format: Format::CloudConfig,
        directories: Vec::new(),
        files,
    })
}

fn starts_the_agent(words: &[&str]) -> bool {
    match words {
        [
            "systemctl",
            "restart" | "start" | "try-restart" | "reload-or-restart",
            unit,
        ] => AGENT_UNITS.contains(unit),
        ["systemctl", "enable", "--now", unit] => AGENT_UNITS.contains(unit),
        _ => false,
    }
}

/// A YAML error's position, without the offending text.
fn location(err: &serde_yaml_ng::Error) -> String {
    err.location().map_or_else(
        || "no position".to_owned(),
        |l| format!("line {}, column {}", l.line(), l.column()),
    )
}

// === Ignition ===

fn parse_ignition(text: &str) -> Result<Provisioning, UserdataError> {
    const IGN: Format = Format::Ignition;
    let ign = |reason: String| refuse(IGN, reason);
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        ign(format!(
            "not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let doc = object(IGN, &doc, "the document")?;
    only_keys(
        IGN,
        doc,
        "the document",
        &["ignition", "storage", "systemd"],
    )?;
    let meta = object(
        IGN,
        doc.get("ignition")
            .ok_or_else(|| ign("ignition.version is required".into()))?,
        "ignition",
    )?;
    only_keys(IGN, meta, "ignition", &["version"])?;
    let version = string(IGN, meta.get("version"), "ignition.version")?;
    if !version.starts_with("3.") {
        return Err(ign(format!(
            "ignition.version {version:?}: only spec 3.x is supported"
        )));
    }
    let mut directories = Vec::new();
    let mut files = Vec::new();
    if let Some(storage) = doc.get("storage") {
        let storage = object(IGN, storage, "storage")?;
        only_keys(IGN, storage, "storage", &["files", "directories"])?;
        for (i, entry) in list(IGN, storage.get("directories"), "storage.directories")?
            .iter()
            .enumerate()
        {
            let what = format!("storage.directories[{i}]");
            let entry = object(IGN, entry, &what)?;
            only_keys(
                IGN,
                entry,
                &what,
                &["path", "mode", "overwrite", "user", "group"],
            )?;
            check_root_owner(entry, &what)?;
            directories.push(DirSpec {
                path: node_path(
                    IGN,
                    string(IGN, entry.get("path"), &format!("{what}.path"))?,
                )?,
                mode: ignition_mode(entry, &what, DEFAULT_DIR_MODE)?,
            });
        }
        for (i, entry) in list(IGN, storage.get("files"), "storage.files")?
            .iter()
            .enumerate()
        {
            let what = format!("storage.files[{i}]");
            let entry = object(IGN, entry, &what)?;
            only_keys(
                IGN,
                entry,
                &what,
                &["path", "mode", "overwrite", "contents", "user", "group"],
            )?;
            check_root_owner(entry, &what)?;
            boolean(IGN, entry.get("overwrite"), &what)?;
            let content = match entry.get("contents") {
                None => Vec::new(),
                Some(contents) => {
                    let contents = object(IGN, contents, &format!("{what}.contents"))?;
                    only_keys(
                        IGN,
                        contents,
                        &format!("{what}.contents"),
                        &["source", "compression"],
                    )?;
                    let compressed = match contents.get("compression") {
                        None | Some(Value::Null) => false,
                        Some(Value::String(kind)) => !kind.is_empty(),
                        Some(_) => true,
                    };
                    if compressed {
                        return Err(ign(format!(
                            "{what}.contents.compression: compressed content is not supported"
                        )));
                    }
                    match contents.get("source") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(source) => {
                            let source =
                                string(IGN, Some(source), &format!("{what}.contents.source"))?;
                            decode_data_url(source).ok_or_else(|| {
                                ign(format!(
                                    "{what}.contents.source: only data: URLs are supported (no \
                                     network on a simulated first boot)"
                                ))
                            })?
                        }
                    }
                }
            };
            files.push(FileSpec {
                path: node_path(
                    IGN,
                    string(IGN, entry.get("path"), &format!("{what}.path"))?,
                )?,
                content,
                mode: ignition_mode(entry, &what, DEFAULT_FILE_MODE)?,
                append: false,
            });
        }
    }
    if let Some(systemd) = doc.get("systemd") {
        let systemd = object(IGN, systemd, "systemd")?;
        only_keys(IGN, systemd, "systemd", &["units"])?;
        for (i, unit) in list(IGN, systemd.get("units"), "systemd.units")?
            .iter()
            .enumerate()
        {
            let what = format!("systemd.units[{i}]");
            let unit = object(IGN, unit, &what)?;
            only_keys(IGN, unit, &what, &["name", "enabled"])?;
            let name = string(IGN, unit.get("name"), &format!("{what}.name"))?;
            if !AGENT_UNITS.contains(&name) {
                return Err(ign(format!(
                    "{what}: only cks-agent.service (shipped by the template) is supported"
                )));
            }
            if unit.get("enabled") == Some(&Value::Bool(false)) {
                return Err(ign(format!(
                    "{what}: disabling cks-agent.service is not supported"
                )));
            }
        }
    }
    Ok(Provisioning {
        format: IGN,
        directories,
        files,
    })
}

fn ignition_mode(
    entry: &Map<String, Value>,
    what: &str,
    default: u32,
) -> Result<u32, UserdataError> {
    match entry.get("mode") {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m <= 0o7777)
            .ok_or_else(|| {
                refuse(
                    Format::Ignition,
                    format!("{what}.mode must be an integer mode (decimal, e.g. 420 for 0644)"),
                )
            }),
    }
}

fn check_root_owner(entry: &Map<String, Value>, what: &str) -> Result<(), UserdataError> {
    for key in ["user", "group"] {
        let Some(owner) = entry.get(key) else {
            continue;
        };
        let ok = match owner {
            Value::Object(map) => map.iter().all(|(k, v)| match k.as_str() {
                "name" => v.as_str() == Some("root") || v.is_null(),
                "id" => v.as_u64() == Some(0) || v.is_null(),
                _ => false,
            }),
            _ => false,
        };
        if !ok {
            return Err(refuse(
                Format::Ignition,
                format!(
                    "{what}.{key}: only root is supported (files are written by the simulator)"
                ),
            ));
        }
    }
    Ok(())
}

/// Decodes `data:[<mediatype>][;base64],<data>` (RFC 2397).
fn decode_data_url(url: &str) -> Option<Vec<u8>> {
    let rest = url.strip_prefix("data:")?;
    let (header, data) = rest.split_once(',')?;
    if header.ends_with(";base64") {
        STANDARD.decode(data).ok()
    } else {
        percent_decode(data)
    }
}

fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

// === shared helpers ===

fn only_keys(
    format: Format,
    map: &Map<String, Value>,
    what: &str,
    allowed: &[&str],
) -> Result<(), UserdataError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(key) => Err(refuse(
            format,
            format!(
                "{what}: key {key:?} is not supported by the simulator (supported: {})",
                allowed.join(", ")
            ),
        )),
    }
}

fn object<'v>(
    format: Format,
    value: &'v Value,
    what: &str,
) -> Result<&'v Map<String, Value>, UserdataError> {
    value
        .as_object()
        .ok_or_else(|| refuse(format, format!("{what} must be a mapping")))
}

fn list<'v>(
    format: Format,
    value: Option<&'v Value>,
    what: &str,
) -> Result<&'v [Value], UserdataError> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(refuse(format, format!("{what} must be a list"))),
    }
}

fn string<'v>(
    format: Format,
    value: Option<&'v Value>,
    what: &str,
) -> Result<&'v str, UserdataError> {
    match value {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(refuse(format, format!("{what} is required"))),
        Some(_) => Err(refuse(format, format!("{what} must be a string"))),
    }
}

fn boolean(format: Format, value: Option<&Value>, what: &str) -> Result<bool, UserdataError> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(refuse(
            format,
            format!("{what}: flags must be true or false"),
        )),
    }
}

fn parse_octal(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

/// Checks a node path: absolute, no `..`, not the root itself.
fn node_path(format: Format, text: &str) -> Result<PathBuf, UserdataError> {
    let path = PathBuf::from(text);
    let plain = path.components().all(|c| {
        matches!(
            c,
            Component::RootDir | Component::Normal(_) | Component::CurDir
        )
    });
    if !path.is_absolute() || !plain || path.parent().is_none() {
        return Err(refuse(
            format,
            format!("path {text:?} must be absolute, below / and without '..'"),
        ));
    }
    Ok(path)
}

// === apply ===

/// Where node path `path` lives under `root`.
pub fn under_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Writes the directories and files under `root`, as the first-boot tool writes them under `/`.
/// Files are replaced atomically (temporary file, fsync, rename).
///
/// # Errors
/// [`UserdataError::Write`] naming the path.
pub fn apply(provisioning: &Provisioning, root: &Path) -> Result<(), UserdataError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UserdataError::Write { path, source }
    };
    for dir in &provisioning.directories {
        let host = under_root(root, &dir.path);
        std::fs::create_dir_all(&host).map_err(failed(&host))?;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(dir.mode))
            .map_err(failed(&host))?;
    }
    for file in &provisioning.files {
        let host = under_root(root, &file.path);
        if let Some(parent) = host.parent() {
            std::fs::create_dir_all(parent).map_err(failed(parent))?;
        }
        if file.append {
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(file.mode)
                .open(&host)
                .map_err(failed(&host))?;
            out.write_all(&file.content).map_err(failed(&host))?;
            out.sync_all().map_err(failed(&host))?;
        } else {
            let name = host
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = host.with_file_name(format!(".{name}.userdata-tmp"));
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(file.mode)
                .open(&tmp)
                .map_err(failed(&tmp))?;
            out.write_all(&file.content).map_err(failed(&tmp))?;
            out.sync_all().map_err(failed(&tmp))?;
            std::fs::rename(&tmp, &host).map_err(failed(&host))?;
        }
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(file.mode))
            .map_err(failed(&host))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(data: &str) -> String {
        match parse(data.as_bytes()) {
            Err(err @ (UserdataError::Refused { .. } | UserdataError::UnknownFormat(_))) => {
                err.to_string()
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn unknown_formats_are_refused() {
        assert!(refused("#!/bin/sh\necho hi\n").contains("shell script"));
        assert!(refused("hello").contains("neither"));
        assert!(refused("Content-Type: multipart/mixed\n").contains("MIME"));
        assert!(matches!(
            parse(&[0x1f, 0x8b, 8, 0]),
            Err(UserdataError::UnknownFormat(_))
        ));
    }

    #[test]
    fn cloud_config_refuses_what_it_does_not_implement_without_echoing_values() {
        let secret = "s3cr3t-token";
        for (doc, needle) in [
            (
                format!("#cloud-config\nhostname: {secret}\n"),
                "\"hostname\"",
            ),
            (
                format!("#cloud-config\nruncmd:\n- [sh, -c, {secret}]\n"),
                "runcmd[0]",
            ),
            (
                format!(
                    "#cloud-config\nwrite_files:\n- path: /a\n  content: {secret}\n  permissions: 644\n"
                ),
                "quoted octal",
            ),
            (
                format!(
                    "#cloud-config\nwrite_files:\n- path: /a\n  content: {secret}\n  encoding: gz+b64\n"
                ),
                "compressed",
            ),
            (
                format!("#cloud-config\nwrite_files:\n- path: ../a\n  content: {secret}\n"),
                "absolute",
            ),
            (
                format!(
                    "#cloud-config\nwrite_files:\n- path: /a\n  content: {secret}\n  owner: core:core\n"
                ),
                "only root",
            ),
            (format!("#cloud-config\n{secret}: [\n"), "not valid YAML"),
        ] {
            let message = refused(&doc);
            assert!(message.contains(needle), "{message}");
            assert!(!message.contains(secret), "{message}");
        }
    }

    #[test]
    fn ignition_refuses_what_it_does_not_implement() {
        for (doc, needle) in [
            (r#"{"ignition":{"version":"2.2.0"}}"#, "3.x"),
            (
                r#"{"ignition":{"version":"3.3.0"},"passwd":{}}"#,
                "\"passwd\"",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/a","contents":{"source":"https://x/y"}}]}}"#,
                "data: URLs",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/a","contents":{"source":"data:,x","compression":"gzip"}}]}}"#,
                "compressed",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"systemd":{"units":[{"name":"sshd.service","enabled":true}]}}"#,
                "only cks-agent.service",
            ),
            (
                r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/a","user":{"name":"core"}}]}}"#,
                "only root",
            ),
        ] {
            let message = refused(doc);
            assert!(message.contains(needle), "{needle}: {message}");
        }
    }

    #[test]
    fn both_formats_write_files_under_the_root() {
        let cloud = "#cloud-config\nwrite_files:\n- path: /etc/cks-agent/config.toml\n  \
                     permissions: '0600'\n  owner: root:root\n  encoding: b64\n  \
                     content: aGVsbG8=\n- path: /etc/motd\n  content: hi\n  append: true\n\
                     runcmd:\n- [systemctl, restart, cks-agent.service]\n- systemctl start cks-agent\n";
        let parsed = parse(cloud.as_bytes()).unwrap();
        assert_eq!(parsed.format, Format::CloudConfig);
        assert_eq!(parsed.files[0].content, b"hello");
        assert_eq!(parsed.files[0].mode, 0o600);
        assert!(parsed.files[1].append);
        assert!(!format!("{parsed:?}").contains("hello"));

        let ignition = r#"{"ignition":{"version":"3.3.0"},
            "storage":{"directories":[{"path":"/var/lib/x","mode":448}],
                       "files":[{"path":"/etc/a","mode":384,"overwrite":true,
                                 "contents":{"source":"data:;base64,aGVsbG8="}},
                                {"path":"/etc/b","contents":{"source":"data:,a%20b"}}]},
            "systemd":{"units":[{"name":"cks-agent.service","enabled":true}]}}"#;
        let parsed_ign = parse(ignition.as_bytes()).unwrap();
        assert_eq!(parsed_ign.files[1].content, b"a b");

        let root = tempfile::tempdir().unwrap();
        apply(&parsed, root.path()).unwrap();
        apply(&parsed, root.path()).unwrap();
        apply(&parsed_ign, root.path()).unwrap();
        let config = root.path().join("etc/cks-agent/config.toml");
        assert_eq!(std::fs::read(&config).unwrap(), b"hello");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&config), 0o600);
        assert_eq!(
            std::fs::read(root.path().join("etc/motd")).unwrap(),
            b"hihi"
        );
        assert_eq!(mode(&root.path().join("etc/a")), 0o600);
        assert_eq!(mode(&root.path().join("var/lib/x")), 0o700);
    }
}
