//! One fuzz target per parser that reads untrusted input, each a plain `fn(&[u8])` that must
//! never panic (and, where a parse succeeds, checks a property of the result):
//!
//! | target | what it reads | where the input comes from |
//! |---|---|---|
//! | [`api_request`] | [`parse_request`] (strict), [`parse_form`] and [`Params`] of a query and a body, [`sign::verify`] | any HTTP client of the API |
//! | [`bundle_manifest`] | [`read_manifest`] of `cks-manifest.json` | the bundle ISO attached to a node |
//! | [`iso_reader`] | [`IsoBundle`]: volume descriptors, directories, Rock Ridge, file data, then [`verify_bundle`] | the bundle ISO (a CD-ROM the agent reads in user space) |
//! | [`image_archive`] | an image archive (tar of an OCI layout): [`verify_bundle`]'s walk, [`verify_image_blobs`], the agent's [`ImportArchive`] | `docker/*.tar` in the bundle |
//! | [`manifest_yaml`] | the isobuilder's YAML scan ([`cks_isobuilder::manifests::scan`]) | CNI and dashboard manifests downloaded at build time |
//!
//! The same functions run two ways: `cargo test -p cks-fuzz` (so `make test`) replays the
//! committed corpus (`fuzz/corpus/<target>/`) and a bounded number of deterministic mutations
//! of it (tests/replay.rs); `make fuzz` runs each under libFuzzer (`cargo fuzz`, coverage
//! guided, `--sanitizer none` on stable Rust) for `FUZZ_SECONDS`. See
//! docs/decisions/0015-fuzzing-on-stable.md.
//!
//! [`parse_form`]: cks_controller::api::params::parse_form
//! [`parse_request`]: cks_controller::api::params::parse_request
//! [`Params`]: cks_controller::api::params::Params
//! [`sign::verify`]: cks_controller::cloudstack::sign::verify
//! [`read_manifest`]: cks_proto::manifest::read_manifest
//! [`IsoBundle`]: cks_proto::iso::IsoBundle
//! [`verify_bundle`]: cks_proto::verify::verify_bundle
//! [`verify_image_blobs`]: cks_proto::verify::verify_image_blobs
//! [`ImportArchive`]: cks_agent::images::archive::ImportArchive

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use cks_agent::images::archive::ImportArchive;
use cks_controller::api::params::{Params, parse_form, parse_request};
use cks_controller::cloudstack::sign;
use cks_proto::ids::Sha256Digest;
use cks_proto::iso::{IsoBundle, read_volume_id};
use cks_proto::manifest::{BundleManifest, FileKind, MANIFEST_PATH, read_manifest};
use cks_proto::verify::{
    BundleSource, ReadSeek, SourceFile, VerifyOptions, verify_bundle, verify_bundle_files,
    verify_image_blobs,
};

pub mod samples;

/// A fuzz target: must not panic, whatever the bytes.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz_targets/*.rs` and `corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("api_request", api_request),
    ("bundle_manifest", bundle_manifest),
    ("iso_reader", iso_reader),
    ("image_archive", image_archive),
    ("manifest_yaml", manifest_yaml),
];

/// The secret the API target signs and verifies with (not a real key).
const SECRET: &str = "fuzz-secret-key";

/// A request to the API: the query string, then (after the first `\n`) a form body.
///
/// Parses both as the API does, looks every parameter up through [`Params`] as commands do, and
/// verifies the signature. Property: the same parameters signed with the secret verify, unless
/// the request asks for `signatureVersion=3` (then its `expires` decides).
pub fn api_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (query, body) = text.split_once('\n').unwrap_or((&text, ""));
    // The strict reading the endpoint uses. Property: what it accepts has no name twice (in
    // any case) and reads back the same once encoded again.
    let form = Some("Application/X-WWW-Form-Urlencoded; charset=UTF-8");
    if let Ok(strict) = parse_request(Some(query), Some((form, body.as_bytes()))) {
        let mut names: Vec<String> = strict.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), strict.len(), "a repeated name was accepted");
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&strict)
            .finish();
        assert_eq!(
            parse_request(Some(&encoded), None).expect("re-encoded parameters parse"),
            strict
        );
    }
    let mut pairs = parse_form(query);
    pairs.extend(parse_form(body));

    let params = Params::new(pairs.clone());
    let _ = params.command();
    for (name, _) in pairs.iter().take(64) {
        let _ = params.get(name);
        let _ = params.list(name);
        let _ = params.map(name);
        let _ = params.number(name);
        let _ = params.boolean(name);
    }
    if let Ok(paging) = params.paging() {
        let items: Vec<u8> = (0..10).collect();
        let page = paging.slice(&items);
        assert!(page.len() <= paging.limit.min(items.len()));
    }
    let _ = params.require_all(&["id", "name", "zoneid"]);

    let now = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a valid time");
    let _ = sign::verify(&pairs, SECRET, now);

    // Signed by the secret holder, the same parameters verify.
    let mut unsigned: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("signature"))
        .collect();
    if sign::param(&unsigned, "apiKey").is_none() {
        unsigned.push(("apiKey".to_string(), "fuzz-api-key".to_string()));
    }
    let version_3 = sign::param(&unsigned, "signatureVersion") == Some("3");
    let signature = sign::sign(&unsigned, SECRET);
    let mut signed = unsigned;
    signed.push(("signature".to_string(), signature));
    let verified = sign::verify(&signed, SECRET, now);
    if !version_3 {
        assert!(
            verified.is_ok(),
            "a request signed with the secret is refused: {verified:?}"
        );
    }
}

/// `cks-manifest.json` bytes. Property: a manifest that parses writes back (`to_json`) to bytes
/// that parse to the same manifest.
pub fn bundle_manifest(data: &[u8]) {
    if let Ok(manifest) = read_manifest(data) {
        let again = read_manifest(&manifest.to_json()).expect("a written manifest parses");
        assert_eq!(again, manifest);
    }
}

/// An ISO image, read as the agent reads a bundle CD-ROM without mounting it: the volume label
/// (device discovery), the file list, every file's bytes (sequentially and with seeks), and, when
/// what it lists is small, the whole bundle verification.
pub fn iso_reader(data: &[u8]) {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).and_then(|()| file.flush()).is_err() {
        return;
    }
    let _ = read_volume_id(file.path());
    let Ok(iso) = IsoBundle::open(file.path()) else {
        return;
    };
    let _ = iso.volume_id();
    let Ok(files) = iso.list_files() else {
        return;
    };
    // Past the image, a file's bytes do not exist: bound what is read per file.
    const READ_LIMIT: u64 = 1 << 20;
    for listed in files.iter().take(64) {
        if let Ok(reader) = iso.open(&listed.path) {
            let mut bytes = Vec::new();
            if reader.take(READ_LIMIT).read_to_end(&mut bytes).is_ok() {
                assert!(bytes.len() as u64 <= listed.size, "{listed:?}");
            }
        }
        if let Ok(mut reader) = iso.open_seekable(&listed.path) {
            let middle = listed.size / 2;
            if reader.seek(SeekFrom::Start(middle)).is_ok() {
                let mut bytes = Vec::new();
                let _ = reader.take(READ_LIMIT).read_to_end(&mut bytes);
            }
        }
    }
    let listed: u64 = files.iter().map(|f| f.size).sum();
    if listed <= 16 * data.len() as u64 {
        let _ = verify_bundle(&iso, &VerifyOptions::default());
    }
}

/// The bytes of a bundle's image archive (`docker/images.tar`, a tar of an OCI layout), in a
/// bundle whose manifest is [`samples::bundle_manifest`] for those bytes (as a builder or an
/// attacker who crafts the whole ISO would write it).
///
/// Walks it as the full verification does ([`verify_bundle`]: tar members, `index.json`, image
/// manifests, blob digests), then as the agent's install does: [`verify_bundle_files`],
/// [`verify_image_blobs`] for every blob, and the import archive for containerd
/// ([`ImportArchive`]), read to its end. Property: when the blobs verify, the import archive is a
/// tar holding `oci-layout`, each verified blob with its bytes, and `index.json` last.
pub fn image_archive(data: &[u8]) {
    let manifest = samples::bundle_manifest(data);
    let source = MemoryBundle::new(&manifest, data);
    let _ = verify_bundle(&source, &VerifyOptions::default());
    if verify_bundle_files(&source, &VerifyOptions::default()).is_err() {
        return;
    }
    let images: Vec<_> = manifest.images.iter().collect();
    let wanted: BTreeSet<Sha256Digest> = manifest.blobs.iter().map(|b| b.digest.clone()).collect();
    let Ok(verified) = verify_image_blobs(&source, &manifest, &images, &wanted) else {
        return;
    };
    let mut archive = ImportArchive::new(&source, &manifest.images, &verified.locations);
    let mut generated = Vec::new();
    archive
        .read_to_end(&mut generated)
        .expect("verified blobs stream");
    assert!(archive.is_complete());
    assert!(archive.changed().is_none());

    let mut members = Vec::new();
    let mut tar = tar::Archive::new(generated.as_slice());
    for entry in tar.entries().expect("a tar") {
        let mut entry = entry.expect("a tar member");
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("member bytes");
        if let Some(hex) = path.strip_prefix("blobs/sha256/") {
            let digest: Sha256Digest = hex.parse().expect("a digest");
            assert_eq!(Sha256Digest::of(&bytes), digest, "{path}");
            assert!(verified.locations.contains_key(&digest), "{path}");
        }
        members.push(path);
    }
    assert_eq!(members.first().map(String::as_str), Some("oci-layout"));
    assert_eq!(members.last().map(String::as_str), Some("index.json"));
    assert_eq!(members.len(), verified.locations.len() + 2, "{members:?}");
}

/// A Kubernetes manifest (YAML, several documents) as the isobuilder scans it for images.
/// Property: the rewritten manifest scans again to the same images.
pub fn manifest_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scanned) = cks_isobuilder::manifests::scan("fuzz.yaml", text) else {
        return;
    };
    let rewritten = String::from_utf8(scanned.rewritten.clone()).expect("YAML is UTF-8");
    let again = cks_isobuilder::manifests::scan("rewritten.yaml", &rewritten)
        .expect("a rewritten manifest parses");
    assert_eq!(again.images, scanned.images);
}

/// A bundle held in memory: the manifest and its image archive.
struct MemoryBundle {
    files: BTreeMap<String, (Vec<u8>, u32)>,
}

impl MemoryBundle {
    fn new(manifest: &BundleManifest, archive: &[u8]) -> Self {
        let mut files = BTreeMap::new();
        files.insert(MANIFEST_PATH.to_string(), (manifest.to_json(), 0o644));
        for file in &manifest.files {
            if file.kind == FileKind::ImageArchive {
                files.insert(file.path.clone(), (archive.to_vec(), file.mode));
            }
        }
        MemoryBundle { files }
    }

    fn bytes(&self, path: &str) -> std::io::Result<&[u8]> {
        self.files
            .get(path)
            .map(|(bytes, _)| bytes.as_slice())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, path.to_string()))
    }
}

impl BundleSource for MemoryBundle {
    fn describe(&self) -> String {
        "the fuzzed bundle".to_string()
    }

    fn list_files(&self) -> std::io::Result<Vec<SourceFile>> {
        Ok(self
            .files
            .iter()
            .map(|(path, (bytes, mode))| SourceFile {
                path: path.clone(),
                size: bytes.len() as u64,
                mode: Some(*mode),
            })
            .collect())
    }

    fn open<'a>(&'a self, path: &str) -> std::io::Result<Box<dyn Read + 'a>> {
        Ok(Box::new(self.bytes(path)?))
    }

    fn open_seekable<'a>(&'a self, path: &str) -> std::io::Result<Box<dyn ReadSeek + 'a>> {
        Ok(Box::new(Cursor::new(self.bytes(path)?)))
    }
}
