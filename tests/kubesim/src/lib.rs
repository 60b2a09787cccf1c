//! Stand-ins for the Kubernetes programs that cannot run on the development and CI machines,
//! keeping their command-line, file and wire contracts so that the agent's real code paths —
//! and the real `kubectl` — run against them.
//!
//! | binary | module | stands in for |
//! |---|---|---|
//! | `kubeadm` | [`kubeadm`] | kubeadm: init, join, tokens, certificates, upgrade, reset |
//! | `kubelet` | [`kubelet`] | the kubelet: Node registration and status, static pods, pod status |
//! | `kube-apiserver` | [`apiserver`] | the API server: HTTPS with client certificates, discovery, CRUD, patch, evictions, watch |
//! | `kube-controller-manager` | [`controller_manager`], [`controllers`] | controllers and scheduler: DaemonSets, Deployments, ReplicaSets, node lifecycle, disruption budgets, GC |
//! | `systemctl` | [`systemd`] | systemd for the `kubelet` and `containerd` units |
//!
//! The node's world comes from the environment ([`env`]): `KUBESIM_ROOT` (the node's root;
//! every path is below it, so no stand-in can write to the real `/etc`), `KUBESIM_CLUSTER` (a
//! directory shared by every node, standing in for etcd: [`cluster`], [`store`]),
//! `KUBESIM_BIN` (the kubesim binaries, so kubeadm can start the kubelet and the kubelet its
//! static pods), `KUBESIM_VERSION` (the version a binary is, set by the bundle's wrappers).
//!
//! How they fit: `kubeadm init` writes real certificates ([`pki`], [`kubeconfig`]), the
//! cluster's first objects and static pod manifests, then runs `systemctl restart kubelet`; the
//! systemctl stand-in starts the kubelet from its unit; the kubelet runs kube-apiserver and
//! kube-controller-manager from the manifests; kubectl talks to the API server with the
//! kubeconfig kubeadm wrote. Every process stays in its parent's process group, so killing a
//! simulated node's process group stops all of it.

pub mod apiserver;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod controller_manager;
pub mod controllers;
pub mod daemon;
pub mod env;
pub mod flags;
pub mod ids;
pub mod kubeadm;
pub mod kubeconfig;
pub mod kubelet;
pub mod patch;
pub mod pki;
pub mod resources;
pub mod selectors;
pub mod store;
pub mod systemd;
