//! Images through the OCI distribution API (`/v2/`), written for this job: registry mirrors by
//! host, anonymous / bearer-token / basic auth, manifest lists resolved to one platform, exact
//! manifest bytes kept (so digests match the registry), blobs resumed into the shared cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cks_proto::ids::{Arch, Sha256Digest};
use cks_proto::manifest::Platform;
use cks_proto::oci::{self, Descriptor, ImageIndex, ImageManifest};
use indicatif::ProgressBar;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use serde::{Deserialize, Serialize};

use super::{FetchError, download_resumable};
use crate::cache::{Cache, RecordKind};
use crate::reference::ImageRef;

/// Largest manifest we accept (registries cap them at 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// What we accept for manifests, most specific first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Registry-specific failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached.
    #[error("registry {registry} is unreachable at {base}: check [images.mirrors] and the network")]
    Unreachable {
        /// The registry host of the image.
        registry: String,
        /// The base URL used.
        base: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The registry wants credentials we do not have, or refused ours.
    #[error("registry {registry} refused access to {repository} ({reason})")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The repository.
        repository: String,
        /// What happened.
        reason: String,
    },
    /// No such image or tag.
    #[error("image {image} not found in its registry")]
    NotFound {
        /// The image.
        image: String,
    },
    /// The image has no manifest for our platform.
    #[error("image {image} has no manifest for linux/{arch} (it has: {available})")]
    NoPlatform {
        /// The image.
        image: String,
        /// The wanted architecture.
        arch: Arch,
        /// Platforms the index lists.
        available: String,
    },
    /// A single-platform image for another architecture.
    #[error("image {image} is for {found}, the bundle is for linux/{arch}")]
    WrongArch {
        /// The image.
        image: String,
        /// The wanted architecture.
        arch: Arch,
        /// What its config says.
        found: String,
    },
    /// The manifest bytes do not match the digest asked for or announced.
    #[error("manifest of {image} has sha256 {actual}, expected {expected}")]
    ManifestDigest {
        /// The image.
        image: String,
        /// Expected.
        expected: String,
        /// Computed.
        actual: Sha256Digest,
    },
    /// Something the registry sent does not parse.
    #[error("registry sent an invalid {what} for {image}: {reason}")]
    Invalid {
        /// The image.
        image: String,
        /// Which document.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The password of configured credentials cannot be read.
    #[error("cannot read the password for registry {registry}: {reason}")]
    Credentials {
        /// The registry host.
        registry: String,
        /// Why.
        reason: String,
    },
}

/// An image resolved to one platform-specific manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedImage {
    /// The normalised reference it is bundled under.
    pub reference: String,
    /// The platform manifest's digest.
    pub manifest_digest: Sha256Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub manifest_size: u64,
    /// Its platform.
    pub platform: Platform,
    /// Config blob descriptor.
    pub config: Descriptor,
    /// Layer descriptors.
    pub layers: Vec<Descriptor>,
}

/// Credentials for one registry, password already read.
#[derive(Clone)]
pub struct Credentials {
    /// User.
    pub username: String,
    /// Password (never logged).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A client for all registries of one build.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    cache: Arc<Cache>,
    mirrors: BTreeMap<String, String>,
    credentials: BTreeMap<String, Credentials>,
    tokens: Arc<Mutex<HashMap<(String, String), String>>>,
    offline: bool,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

#[derive(Deserialize)]
struct ConfigPlatform {
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
}

impl RegistryClient {
    /// A client with registry `mirrors` (host → base URL) and per-host `credentials`.
    pub fn new(
        http: reqwest::Client,
        cache: Arc<Cache>,
        mirrors: BTreeMap<String, String>,
        credentials: BTreeMap<String, Credentials>,
        offline: bool,
    ) -> Self {
        RegistryClient {
            http,
            cache,
            mirrors,
            credentials,
            tokens: Arc::default(),
            offline,
        }
    }

    /// The base URL images of `registry` are pulled from.
    pub fn base_url(&self, registry: &str) -> String {
        if let Some(m) = self.mirrors.get(registry) {
            return m.trim_end_matches('/').to_string();
        }
        match registry {
            "docker.io" => "https://registry-1.docker.io".to_string(),
            host => format!("https://{host}"),
        }
    }

    /// Resolves `image` to its manifest for linux/`arch`, storing the manifest (and, for
    /// single-platform images, the config) in the cache.
    ///
    /// # Errors
    /// [`FetchError`] / [`RegistryError`]; offline, [`FetchError::NotCached`].
    pub async fn resolve(&self, image: &ImageRef, arch: Arch) -> Result<ResolvedImage, FetchError> {
        let record_key = format!("{image}|linux/{arch}");
        if self.offline || image.digest().is_some() {
            if let Some(rec) = self
                .cache
                .record::<ResolvedImage>(RecordKind::Ref, &record_key)
                && self
                    .cache
                    .has_blob(&rec.manifest_digest, Some(rec.manifest_size))
            {
                return Ok(rec);
            }
            if self.offline {
                return Err(FetchError::NotCached {
                    what: format!("image {image} (linux/{arch})"),
                });
            }
        }
        let (bytes, media_type) = self.get_manifest(image, image.manifest_reference()).await?;
        let resolved = if oci::is_index_media_type(&media_type) {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Invalid {
                    image: image.to_string(),
                    what: "image index",
                    reason: e.to_string(),
                })?;
            let chosen =
                choose_platform(&index, arch).ok_or_else(|| RegistryError::NoPlatform {
                    image: image.to_string(),
                    arch,
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            let (bytes, media_type) = self.get_manifest(image, &chosen.digest).await?;
            let platform = chosen.platform.clone().map_or(
                Platform {
                    os: "linux".into(),
                    architecture: arch.to_string(),
                    variant: None,
                },
                |p| Platform {
                    os: p.os,
                    architecture: p.architecture,
                    variant: p.variant,
                },
            );
            let parsed = parse_manifest(image, &bytes)?;
            self.store_manifest(image, &bytes, parsed, media_type, platform)?
        } else {
            let parsed = parse_manifest(image, &bytes)?;
            // A single-platform image: its config says what it is for.
            self.fetch_blob(image, &parsed.config, &ProgressBar::hidden())
                .await?;
            let digest: Sha256Digest =
                parsed
                    .config
                    .digest
                    .parse()
                    .map_err(|_| RegistryError::Invalid {
                        image: image.to_string(),
                        what: "config descriptor",
                        reason: format!("digest {:?}", parsed.config.digest),
                    })?;
            let config_bytes = self
                .cache
                .read_blob(&digest)
                .map_err(|e| FetchError::io("read", &digest, e))?;
            let cfg: ConfigPlatform =
                serde_json::from_slice(&config_bytes).map_err(|e| RegistryError::Invalid {
                    image: image.to_string(),
                    what: "image config",
                    reason: e.to_string(),
                })?;
            let found_arch = cfg.architecture.unwrap_or_default();
            let os = cfg.os.unwrap_or_else(|| "linux".into());
            if found_arch != arch.as_str() || os != "linux" {
                return Err(RegistryError::WrongArch {
                    image: image.to_string(),
                    arch,
                    found: format!("{os}/{found_arch}"),
                }
                .into());
            }
            let platform = Platform {
                os,
                architecture: found_arch,
                variant: cfg.variant,
            };
            self.store_manifest(image, &bytes, parsed, media_type, platform)?
        };
        self.cache
            .put_record(RecordKind::Ref, &record_key, &resolved)
            .map_err(|e| FetchError::io("record", image, e))?;
        Ok(resolved)
    }

    /// Makes one blob of `image`'s repository available in the cache (once: a present blob is
    /// not fetched again, whichever image needed it first).
    ///
    /// # Errors
    /// [`FetchError`].
    pub async fn fetch_blob(
        &self,
        image: &ImageRef,
        descriptor: &Descriptor,
        bar: &ProgressBar,
    ) -> Result<(), FetchError> {
        let digest: Sha256Digest =
            descriptor
                .digest
                .parse()
                .map_err(|_| RegistryError::Invalid {
                    image: image.to_string(),
                    what: "descriptor",
                    reason: format!("unsupported digest {:?}", descriptor.digest),
                })?;
        if self.cache.has_blob(&digest, Some(descriptor.size)) {
            return Ok(());
        }
        if self.offline {
            return Err(FetchError::NotCached {
                what: format!("blob {} of {image}", descriptor.digest),
            });
        }
        let url = format!(
            "{}/v2/{}/blobs/{}",
            self.base_url(image.registry()),
            image.repository(),
            descriptor.digest
        );
        let (_, size) = download_resumable(
            &self.cache,
            &descriptor.digest,
            &url,
            Some(&digest),
            bar,
            |offset| {
                let url = url.clone();
                async move {
                    let range = offset.map(|o| format!("bytes={o}-"));
                    self.get(image, &url, range.as_deref(), None).await
                }
            },
        )
        .await?;
        if size != descriptor.size {
            tracing::warn!(image = %image, digest = %descriptor.digest, size, expected = descriptor.size, "blob size differs from its descriptor");
        }
        Ok(())
    }

    fn store_manifest(
        &self,
        image: &ImageRef,
        bytes: &[u8],
        parsed: ImageManifest,
        media_type: String,
        platform: Platform,
    ) -> Result<ResolvedImage, FetchError> {
        let digest = self
            .cache
            .put_bytes(bytes)
            .map_err(|e| FetchError::io("store manifest of", image, e))?;
        Ok(ResolvedImage {
            reference: image.to_string(),
            manifest_digest: digest,
            media_type: parsed.media_type.unwrap_or(media_type),
            manifest_size: bytes.len() as u64,
            platform,
            config: parsed.config,
            layers: parsed.layers,
        })
    }

    /// GETs a manifest by tag or digest, checking its digest.
    async fn get_manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Vec<u8>, String), FetchError> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base_url(image.registry()),
            image.repository()
        );
        let response = self.get(image, &url, None, Some(MANIFEST_ACCEPT)).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::NotFound {
                    image: image.to_string(),
                }
                .into());
            }
            status => return Err(FetchError::Status { url, status }),
        }
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let announced = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .bytes()
            .await
            .map_err(|source| FetchError::Request {
                url: url.clone(),
                source,
            })?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::Invalid {
                image: image.to_string(),
                what: "manifest",
                reason: format!("{} bytes is more than a manifest may have", bytes.len()),
            }
            .into());
        }
        let actual = Sha256Digest::of(&bytes);
        let expected = if reference.starts_with("sha256:") {
            Some(reference.to_string())
        } else {
            announced
        };
        if let Some(expected) = expected
            && expected != actual.oci()
        {
            return Err(RegistryError::ManifestDigest {
                image: image.to_string(),
                expected,
                actual,
            }
            .into());
        }
        // Some registries answer with a generic content type; the document says what it is.
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| oci::MEDIA_TYPE_OCI_MANIFEST.to_string())
        } else {
            media_type
        };
        Ok((bytes.to_vec(), media_type))
    }

    /// A GET with registry authentication: anonymous first; on 401, the challenge says whether
    /// to fetch a bearer token (with our credentials, if any) or to send basic credentials.
    async fn get(
        &self,
        image: &ImageRef,
        url: &str,
        range: Option<&str>,
        accept: Option<&str>,
    ) -> Result<reqwest::Response, FetchError> {
        let scope = format!("repository:{}:pull", image.repository());
        let token_key = (image.registry().to_string(), scope.clone());
        let cached_token = self.lock_tokens().get(&token_key).cloned();
        let request = |auth: Option<String>| {
            let mut r = self.http.get(url);
            if let Some(a) = accept {
                r = r.header(ACCEPT, a);
            }
            if let Some(range) = range {
                r = r.header(reqwest::header::RANGE, range);
            }
            if let Some(auth) = auth {
                r = r.header(AUTHORIZATION, auth);
            }
            r
        };
        let send = |r: reqwest::RequestBuilder| async {
            r.send().await.map_err(|source| {
                if source.is_connect() || source.is_timeout() {
                    FetchError::Registry(RegistryError::Unreachable {
                        registry: image.registry().to_string(),
                        base: self.base_url(image.registry()),
                        source,
                    })
                } else {
                    FetchError::Request {
                        url: url.to_string(),
                        source,
                    }
                }
            })
        };
        let first = send(request(cached_token.map(|t| format!("Bearer {t}")))).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let unauthorized = |reason: String| {
            FetchError::Registry(RegistryError::Unauthorized {
                registry: image.registry().to_string(),
                repository: image.repository().to_string(),
                reason,
            })
        };
        let credentials = self.credentials.get(image.registry());
        let (scheme, params) = parse_challenge(&challenge);
        let auth = if scheme.eq_ignore_ascii_case("bearer") {
            let token = self
                .fetch_token(image, &params, &scope, credentials)
                .await?;
            self.lock_tokens().insert(token_key, token.clone());
            format!("Bearer {token}")
        } else if scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = credentials else {
                return Err(unauthorized(
                    "it asks for basic credentials; add them under [images.auth]".into(),
                ));
            };
            basic_header(c)
        } else {
            return Err(unauthorized(format!("unsupported challenge {challenge:?}")));
        };
        let second = send(request(Some(auth))).await?;
        if second.status() == StatusCode::UNAUTHORIZED || second.status() == StatusCode::FORBIDDEN {
            return Err(unauthorized(format!(
                "HTTP {} with {} credentials",
                second.status().as_u16(),
                if credentials.is_some() {
                    "the configured"
                } else {
                    "no"
                }
            )));
        }
        Ok(second)
    }

    async fn fetch_token(
        &self,
        image: &ImageRef,
        params: &BTreeMap<String, String>,
        scope: &str,
        credentials: Option<&Credentials>,
    ) -> Result<String, FetchError> {
        let unauthorized = |reason: String| {
            FetchError::Registry(RegistryError::Unauthorized {
                registry: image.registry().to_string(),
                repository: image.repository().to_string(),
                reason,
            })
        };
        let Some(realm) = params.get("realm") else {
            return Err(unauthorized("bearer challenge without realm".into()));
        };
        let mut query: Vec<(&str, &str)> =
            vec![("scope", params.get("scope").map_or(scope, String::as_str))];
        if let Some(service) = params.get("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(c) = credentials {
            request = request.header(AUTHORIZATION, basic_header(c));
        }
        let response = request.send().await.map_err(|source| FetchError::Request {
            url: realm.clone(),
            source,
        })?;
        if !response.status().is_success() {
            return Err(unauthorized(format!(
                "token service {realm} answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| unauthorized(format!("token service {realm} sent no token: {e}")))?;
        body.token
            .or(body.access_token)
            .ok_or_else(|| unauthorized(format!("token service {realm} sent no token")))
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep going.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn basic_header(c: &Credentials) -> String {
    use base64::Engine;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn parse_manifest(image: &ImageRef, bytes: &[u8]) -> Result<ImageManifest, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Invalid {
        image: image.to_string(),
        what: "image manifest",
        reason: e.to_string(),
    })
}

/// Picks linux/`arch` from an index; for arm64 a `v8` variant or none.
fn choose_platform(index: &ImageIndex, arch: Arch) -> Option<&Descriptor> {
    index.manifests.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| {
            p.os == "linux"
                && p.architecture == arch.as_str()
                && (arch != Arch::Arm64 || p.variant.as_deref().is_none_or(|v| v == "v8"))
        })
    })
}

/// Parses `Bearer realm="…",service="…",scope="…"` into its scheme and parameters.
fn parse_challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_string());
        rest = remaining.trim().trim_start_matches(',').trim();
    }
    (scheme.to_string(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn chooses_the_platform_from_an_index() {
        let d = |arch: &str, variant: Option<&str>, digest: &str| Descriptor {
            media_type: oci::MEDIA_TYPE_OCI_MANIFEST.into(),
            digest: digest.into(),
            size: 1,
            platform: Some(oci::DescriptorPlatform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(str::to_string),
            }),
            annotations: Default::default(),
        };
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                d("arm", Some("v7"), "a"),
                d("arm64", Some("v8"), "b"),
                d("amd64", None, "c"),
            ],
        };
        assert_eq!(choose_platform(&index, Arch::Arm64).unwrap().digest, "b");
        assert_eq!(choose_platform(&index, Arch::Amd64).unwrap().digest, "c");
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
