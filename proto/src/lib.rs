//! Contracts shared by `cks-isobuilder`, `cks-agent` and `cks-controller`.
//!
//! * [`agent`]: the gRPC protocol between node agents and the controller, generated from
//!   `proto/agent.proto` (whose comments define the semantics).
//! * [`manifest`]: `cks-manifest.json`, the record at the root of every bundle ISO that lists each
//!   file, image and blob with its digest. Versioned as modules; [`manifest::v1`] is current.
//! * [`verify`]: the one implementation of bundle verification, used by the isobuilder after a
//!   build and by `cks-isobuilder verify`, and by the agent before it installs anything.
//! * [`ids`]: small validated newtypes (architecture, Kubernetes version, sha256 digest).
//! * [`oci`]: the OCI image-layout vocabulary both sides of an image archive agree on.
//!
//! The only I/O here is reading a bundle through the [`verify::BundleSource`] trait, whose
//! implementations (a directory, an ISO file) are small and shared so that the builder and the
//! node check bundles in exactly the same way.

pub mod ids;
pub mod iso;
pub mod manifest;
pub mod oci;
pub mod verify;

/// Generated gRPC types and services of `proto/agent.proto` (package `cks.agent.v1`).
#[allow(missing_docs, clippy::all)]
pub mod agent {
    tonic::include_proto!("cks.agent.v1");
}
