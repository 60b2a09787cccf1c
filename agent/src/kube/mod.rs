//! Driving Kubernetes on the node: [`kubeadm`] runs kubeadm for the controller's commands.
//! (kubectl — applying manifests, draining, node status — comes with the controller session.)

pub mod kubeadm;
