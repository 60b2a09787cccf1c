//! `cks-isobuilder`: turns a release spec into a verified, reproducible Kubernetes binaries ISO
//! for CloudStack's Kubernetes Service.
//!
//! Inputs: a [`spec::ReleaseSpec`] (TOML). Steps ([`build::build`]): download Kubernetes binaries,
//! CNI plugins, crictl, etcd and manifests into a content-addressed [`cache`] (parallel,
//! resumable, each checked against a pinned or published sha256); find the images the manifests
//! use ([`manifests`]) plus kubeadm's set ([`kubeadm`]); pull them through the OCI distribution
//! API ([`fetch::registry`]) for the spec's platform; write them as one deduplicated OCI
//! [`archive`]; record everything in `cks-manifest.json`; write the ISO with xorriso ([`iso`]).
//! Output: `<name>-<x86_64|aarch64>.iso` and its `.sha256`, appearing only by atomic rename.
//!
//! Failure behaviour: the first failed input aborts the build with its URL and digests; with
//! `--offline`, every missing input is listed at once. Nothing downloaded is ever executed.

pub mod archive;
pub mod build;
pub mod cache;
pub mod fetch;
pub mod inspect;
pub mod iso;
pub mod kubeadm;
pub mod manifests;
pub mod progress;
pub mod reference;
pub mod spec;
pub mod templates;
