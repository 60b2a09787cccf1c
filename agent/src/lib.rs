//! `cks-agent`: the node bootstrap agent that replaces CloudStack's SSH (work in progress; see
//! the agent issue). It will find, verify and install the bundle ISO and drive kubeadm on orders
//! of the controller.
