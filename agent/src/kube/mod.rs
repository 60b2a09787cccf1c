//! Driving Kubernetes on the node: [`kubeadm`] runs kubeadm for the controller's commands,
//! [`kubectl`] applies manifests, drains, uncordons and reads node status.

pub mod kubeadm;
pub mod kubectl;
