//! Stand-ins for the Kubernetes programs that cannot run on the development and CI machines.
//!
//! [`kubeadm`] behaves like kubeadm where the agent relies on it: the same sub-commands and flags
//! (unknown flags refused as cobra does), the same files written under the node's root
//! (`/etc/kubernetes/admin.conf`, `kubelet.conf`, `pki/ca.crt`, static pod manifests,
//! `/var/lib/kubelet/config.yaml`, `kubeadm-flags.env`), the same join command printed, the same
//! failures (a second `init` or `join` fails preflight; a wrong token or CA hash is refused; an
//! expired token or certificate key is refused) and exit codes.
//!
//! Secrets can be given in a `--config` file instead of flags ([`config`]), as the agent does so
//! that tokens and keys never appear in process arguments.
//!
//! Two environment variables replace what a real machine has:
//! * `KUBESIM_ROOT`: the node's root directory; every path is below it (required, so the
//!   stand-in can never write to the real `/etc`).
//! * `KUBESIM_CLUSTER`: a directory shared by the nodes of one simulated cluster, standing in for
//!   the API server's state (bootstrap tokens, the uploaded certificates' key, the CA hash, nodes).

pub mod cluster;
pub mod config;
pub mod flags;
pub mod kubeadm;
