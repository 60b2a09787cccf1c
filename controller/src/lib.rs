//! `cks-controller`: the CKS API endpoint and cluster workflows (work in progress; see the
//! controller issues).

pub mod agents;
pub mod cloudstack;
pub mod pki;
pub mod userdata;
