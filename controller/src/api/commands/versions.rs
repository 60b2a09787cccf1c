//! `addKubernetesSupportedVersion`, `listKubernetesSupportedVersions`,
//! `updateKubernetesSupportedVersion`, `deleteKubernetesSupportedVersion` (cks-reference §4.1,
//! validation texts from §5 "Add version").

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::list_reply;
use crate::api::error::ApiError;
use crate::api::params::Params;
use crate::api::{Api, Reply};
use crate::cloudstack::Caller;
use crate::jobs::JobSpec;
use crate::render;
use crate::store::{VersionRecord, VersionState, now};
use crate::versions::{MIN_SUPPORTED, Semver};

/// How long the controller follows a registered ISO to Ready or Failed (then it only logs).
const ISO_WATCH: Duration = Duration::from_secs(3600);

/// `addKubernetesSupportedVersion` (admin, sync): registers the ISO in CloudStack and records
/// the version; a background task follows the ISO to Ready or Failed.
///
/// # Errors
/// CKS's validation errors; CloudStack's refusal of the ISO.
pub async fn add(api: &Api, params: &Params) -> Result<Reply, ApiError> {
    params.require_all(&["semanticversion", "mincpunumber", "minmemory"])?;
    let semver_text = params.require("semanticversion")?;
    let min_cpu = params.number("mincpunumber")?.unwrap_or(0);
    if min_cpu < 2 {
        return Err(ApiError::param(
            "Invalid value for mincpunumber parameter. Minimum 2 vCPUs required.",
        ));
    }
    let min_memory = params.number("minmemory")?.unwrap_or(0);
    if min_memory < 2048 {
        return Err(ApiError::param(
            "Invalid value for minmemory parameter. Minimum 2048MB memory required",
        ));
    }
    let semver = Semver::parse(semver_text).ok_or_else(|| {
        ApiError::param(format!(
            "Invalid version format, {semver_text}. Semantic version should be specified in MAJOR.MINOR.PATCH format"
        ))
    })?;
    if semver < MIN_SUPPORTED {
        return Err(ApiError::param(format!(
            "New supported Kubernetes version cannot be added as {MIN_SUPPORTED} is minimum version supported by Kubernetes Service"
        )));
    }
    let url = params.get("url").unwrap_or_default();
    if url.trim().is_empty() {
        return Err(ApiError::param(format!(
            "Invalid URL for ISO specified, {url}"
        )));
    }
    let arch = match params.get("arch").unwrap_or("x86_64") {
        a if a.eq_ignore_ascii_case("x86_64") || a.eq_ignore_ascii_case("amd64") => "x86_64",
        a if a.eq_ignore_ascii_case("aarch64") || a.eq_ignore_ascii_case("arm64") => "aarch64",
        other => {
            return Err(ApiError::param(format!(
                "Invalid arch {other}: supported values are x86_64 and aarch64"
            )));
        }
    };
    let zone_id = params.get("zoneid").map(str::to_string);
    let zone = match &zone_id {
        Some(id) => Some(
            api.ctx
                .cloud
                .zone(id)
                .await
                .map_err(|e| ApiError::from(&e))?
                .ok_or_else(|| ApiError::param(format!("Unable to find zone by ID: {id}")))?,
        ),
        None => None,
    };
    let name = match (params.get("name"), &zone) {
        (Some(name), _) => name.to_string(),
        (None, Some(zone)) => format!("v{semver}-{}", zone.name),
        (None, None) => format!("v{semver}"),
    };
    let checksum = params.get("checksum").map(str::to_string);
    if let Some(checksum) = &checksum {
        check_checksum(checksum)?;
    }
    let direct_download = params.boolean("directdownload")?.unwrap_or(false);
    let iso_name = format!("{name}-Kubernetes-Binaries-ISO");
    let iso = api
        .ctx
        .cloud
        .register_iso(
            &iso_name,
            url,
            zone_id.as_deref(),
            checksum.as_deref(),
            arch,
            direct_download,
        )
        .await
        .map_err(|e| ApiError::from(&e))?;
    let version = VersionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        semantic_version: semver.to_string(),
        iso_id: iso.id.clone(),
        iso_name: iso.name.clone(),
        zone_id,
        state: VersionState::Enabled,
        min_cpu: u32::try_from(min_cpu).unwrap_or(u32::MAX),
        min_memory_mb: u32::try_from(min_memory).unwrap_or(u32::MAX),
        arch: arch.to_string(),
        url: url.to_string(),
        checksum,
        direct_download,
        created: now(),
    };
    if let Err(err) = api.ctx.store.insert_version(&version) {
        // Do not leave an ISO nobody knows about.
        let _ = api.ctx.cloud.delete_iso(&iso.id).await;
        return Err(err.into());
    }
    info!(version = %version.name, iso = %iso.id, "Kubernetes version added");
    watch_iso(api, &version);
    Ok(Reply::Sync(
        json!({ "kubernetessupportedversion": render::version(&api.ctx, &version).await }),
    ))
}

/// `{SHA-256}<64 hex>`, `{MD5}<32 hex>` or bare MD5 hex, as CloudStack accepts.
fn check_checksum(checksum: &str) -> Result<(), ApiError> {
    let (algorithm, hex) = match checksum.strip_prefix('{').and_then(|r| r.split_once('}')) {
        Some((algorithm, hex)) => (algorithm.to_ascii_uppercase(), hex),
        None => ("MD5".to_string(), checksum),
    };
    let length = match algorithm.as_str() {
        "SHA-256" | "SHA256" => 64,
        "SHA-512" | "SHA512" => 128,
        "SHA-1" | "SHA1" => 40,
        "MD5" => 32,
        _ => 0,
    };
    if length == 0 || hex.len() != length || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::param(format!(
            "Invalid checksum {checksum}: expected {{SHA-256}}<64 hex digits> or an MD5 digest"
        )));
    }
    Ok(())
}

/// Follows a freshly registered ISO until CloudStack says Ready or Failed, and logs which.
fn watch_iso(api: &Api, version: &VersionRecord) {
    let cloud = api.ctx.cloud.clone();
    let (iso_id, name) = (version.iso_id.clone(), version.name.clone());
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + ISO_WATCH;
        let mut delay = Duration::from_millis(200);
        while tokio::time::Instant::now() < deadline {
            match cloud.iso(&iso_id).await {
                Ok(Some(iso)) if iso.isready => {
                    info!(version = %name, iso = %iso_id, "binaries ISO is Ready");
                    return;
                }
                Ok(Some(iso))
                    if iso
                        .status
                        .as_deref()
                        .is_some_and(|s| s.to_ascii_lowercase().contains("fail")) =>
                {
                    warn!(version = %name, iso = %iso_id, status = ?iso.status,
                        "binaries ISO failed to download; clusters cannot use this version");
                    return;
                }
                Ok(None) => {
                    warn!(version = %name, iso = %iso_id, "binaries ISO disappeared");
                    return;
                }
                _ => {}
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        warn!(version = %name, iso = %iso_id, "binaries ISO still not Ready after an hour");
    });
}

/// `listKubernetesSupportedVersions`: filters `id`, `zoneid` (the zone's and all-zone
/// versions), `minimumsemanticversion` or `minimumkubernetesversionid`, `arch`, `keyword`, with
/// paging. Unlike CKS the minimum-version filter applies before paging, so `count` is right.
///
/// # Errors
/// Both minimum filters; an unknown minimum version id.
pub async fn list(api: &Api, params: &Params) -> Result<Reply, ApiError> {
    let paging = params.paging()?;
    let min_semver = params.get("minimumsemanticversion");
    let min_id = params.get("minimumkubernetesversionid");
    if min_semver.is_some() && min_id.is_some() {
        return Err(ApiError::param(
            "Both parameters minimumsemanticversion, minimumkubernetesversionid can not be passed together",
        ));
    }
    let minimum = match (min_semver, min_id) {
        (Some(text), _) => Some(Semver::parse(text).ok_or_else(|| {
            ApiError::param(format!(
                "Invalid version format, {text}. Semantic version should be specified in MAJOR.MINOR.PATCH format"
            ))
        })?),
        (None, Some(id)) => {
            let version = api.ctx.store.version(id)?.ok_or_else(|| {
                ApiError::param(format!("Invalid minimum Kubernetes version ID: {id}"))
            })?;
            Semver::parse(&version.semantic_version)
        }
        (None, None) => None,
    };
    let keyword = params.get("keyword").map(str::to_lowercase);
    let mut versions: Vec<VersionRecord> = api
        .ctx
        .store
        .versions()?
        .into_iter()
        .filter(|v| params.get("id").is_none_or(|id| v.id == id))
        .filter(|v| {
            params
                .get("zoneid")
                .is_none_or(|z| v.zone_id.is_none() || v.zone_id.as_deref() == Some(z))
        })
        .filter(|v| {
            params
                .get("arch")
                .is_none_or(|a| v.arch.eq_ignore_ascii_case(a))
        })
        .filter(|v| {
            keyword
                .as_ref()
                .is_none_or(|k| v.name.to_lowercase().contains(k))
        })
        .filter(|v| {
            minimum.is_none_or(|min| Semver::parse(&v.semantic_version).is_some_and(|s| s >= min))
        })
        .collect();
    // Newest version first, as CKS sorts.
    versions.sort_by(|a, b| crate::versions::compare(&b.semantic_version, &a.semantic_version));
    let page = paging.slice(&versions);
    let items = render::versions(&api.ctx, page).await;
    let count = versions.len();
    if count == 0 {
        return Ok(list_reply("kubernetessupportedversion", Vec::new(), paging));
    }
    let mut body = json!({ "count": count });
    if !items.is_empty() {
        body["kubernetessupportedversion"] = json!(items);
    }
    Ok(Reply::Sync(body))
}

/// `updateKubernetesSupportedVersion id state=Enabled|Disabled` (admin).
///
/// # Errors
/// Unknown id; a state other than `Enabled`/`Disabled` (case-sensitive, as CKS's `valueOf`).
pub async fn update(api: &Api, params: &Params) -> Result<Reply, ApiError> {
    params.require_all(&["id", "state"])?;
    let id = params.require("id")?;
    let state = match params.require("state")? {
        "Enabled" => VersionState::Enabled,
        "Disabled" => VersionState::Disabled,
        _ => return Err(ApiError::param("Invalid value for state parameter")),
    };
    let mut version = api
        .ctx
        .store
        .version(id)?
        .ok_or_else(|| ApiError::param(format!("Invalid Kubernetes version ID: {id}")))?;
    version.state = state;
    api.ctx.store.update_version(&version)?;
    Ok(Reply::Sync(
        json!({ "kubernetessupportedversion": render::version(&api.ctx, &version).await }),
    ))
}

/// `deleteKubernetesSupportedVersion id` (admin, async): refused while a cluster uses the
/// version; deletes the ISO, then the version.
///
/// # Errors
/// Unknown id; the version in use.
pub async fn delete(api: &Api, caller: &Caller, params: &Params) -> Result<Reply, ApiError> {
    let id = params.require("id")?;
    let version = api
        .ctx
        .store
        .version(id)?
        .ok_or_else(|| ApiError::param(format!("Invalid Kubernetes version ID: {id}")))?;
    let in_use = api
        .ctx
        .store
        .clusters()?
        .iter()
        .any(|c| c.version_id == version.id);
    if in_use {
        return Err(ApiError::param(format!(
            "Unable to delete Kubernetes version ID: {id}. Existing clusters currently using the version."
        )));
    }
    let job = api.ctx.jobs.create(
        caller,
        &JobSpec {
            command: "deleteKubernetesSupportedVersion",
            cmd: "org.apache.cloudstack.api.command.admin.kubernetes.version.DeleteKubernetesSupportedVersionCmd",
            instance_type: "KubernetesSupportedVersion",
            instance_id: &version.id,
        },
    )?;
    let (ctx, job_id) = (api.ctx.clone(), job.id.clone());
    tokio::spawn(async move {
        let outcome = match ctx.cloud.delete_iso(&version.iso_id).await {
            // Already gone is fine: the goal is that it does not exist.
            Err(err) if err.errorcode() != Some(431) => Err(ApiError::from(&err)),
            _ => ctx
                .store
                .remove_version(&version.id)
                .map_err(ApiError::from),
        };
        let recorded = match outcome {
            Ok(()) => {
                info!(version = %version.name, "Kubernetes version deleted");
                ctx.jobs.succeed(&job_id, json!({ "success": true }))
            }
            Err(err) => ctx.jobs.fail(&job_id, err.code, &err.text),
        };
        if let Err(err) = recorded {
            warn!(error = %err, "cannot record the job's result");
        }
    });
    Ok(Reply::Async {
        job_id: job.id,
        id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_checked_for_shape() {
        assert!(check_checksum(&format!("{{SHA-256}}{}", "a".repeat(64))).is_ok());
        assert!(check_checksum(&"b".repeat(32)).is_ok());
        assert!(check_checksum("{SHA-256}abc").is_err());
        assert!(check_checksum(&format!("{{CRC}}{}", "a".repeat(64))).is_err());
    }
}
