//! Driving Kubernetes on the node: [`kubeadm`] runs kubeadm for the controller's commands,
//! [`kubectl`] applies manifests, drains (bounded, naming the budgets that block it), uncordons,
//! and reads node status and kube-system's pods (the health check).

pub mod kubeadm;
pub mod kubectl;
