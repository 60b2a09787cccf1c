//! What kubeadm writes on a node: certificates and keys under `/etc/kubernetes/pki`, the
//! kubeconfig files, the static pod manifests and the kubelet's configuration.

use std::net::IpAddr;

use super::{Env, Failure, path, write, write_secret};
use crate::kubeconfig::Kubeconfig;
use crate::pki::{CertificateAuthority, LeafRequest, Usage};

/// The etcd image tag kubeadm uses for the Kubernetes minors it supports here.
pub const ETCD_TAG: &str = "3.5.21-0";
/// The sandbox image.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The CRI socket kubeadm records.
pub const CRI_SOCKET: &str = "unix:///var/run/containerd/containerd.sock";

/// Where this control plane's API server listens and what its certificate covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneSpec {
    /// The node's name.
    pub node_name: String,
    /// `--apiserver-advertise-address`.
    pub advertise_address: IpAddr,
    /// `--apiserver-bind-port`.
    pub bind_port: u16,
    /// The control-plane endpoint (`host:port`).
    pub endpoint: String,
    /// Extra SANs (`--apiserver-cert-extra-sans`).
    pub extra_sans: Vec<String>,
    /// The service CIDR.
    pub service_subnet: String,
    /// The pod CIDR ("" when not set).
    pub pod_subnet: String,
    /// The Kubernetes version of the static pods.
    pub version: String,
}

impl ControlPlaneSpec {
    /// The first address of the service network (`10.96.0.1`).
    pub fn kubernetes_service_ip(&self) -> Option<IpAddr> {
        let network: std::net::Ipv4Addr = self.service_subnet.split('/').next()?.parse().ok()?;
        Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from(network) + 1)))
    }

    /// The SANs of the API server certificate (DNS names, IPs), as kubeadm computes them.
    pub fn apiserver_sans(&self) -> (Vec<String>, Vec<IpAddr>) {
        let mut dns = vec![
            self.node_name.clone(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
        ];
        let mut ips: Vec<IpAddr> = self.kubernetes_service_ip().into_iter().collect();
        ips.push(self.advertise_address);
        let endpoint_host = self
            .endpoint
            .rsplit_once(':')
            .map_or(self.endpoint.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        for name in std::iter::once(endpoint_host).chain(self.extra_sans.iter().map(String::as_str))
        {
            match name.parse::<IpAddr>() {
                Ok(ip) if !ips.contains(&ip) => ips.push(ip),
                Ok(_) => {}
                Err(_) if !dns.iter().any(|d| d == name) && !name.is_empty() => {
                    dns.push(name.to_string())
                }
                Err(_) => {}
            }
        }
        (dns, ips)
    }
}

/// Writes a certificate pair `pki/<name>.crt` + `pki/<name>.key`.
fn write_pair(env: &Env, name: &str, cert: &crate::pki::IssuedCert) -> Result<(), Failure> {
    write(
        env,
        &format!("/etc/kubernetes/pki/{name}.crt"),
        &cert.cert_pem,
    )?;
    write_secret(
        env,
        &format!("/etc/kubernetes/pki/{name}.key"),
        &cert.key_pem,
    )
}

/// The control plane's certificates: the API server's serving certificate and its kubelet
/// client certificate, plus the service-account key pair.
pub fn write_control_plane_certs(
    env: &Env,
    ca: &CertificateAuthority,
    spec: &ControlPlaneSpec,
    sa_keys: &(String, String),
) -> Result<(), Failure> {
    write(env, "/etc/kubernetes/pki/ca.crt", ca.cert_pem())?;
    write_secret(env, "/etc/kubernetes/pki/ca.key", &ca.key_pem())?;
    let (dns_names, ip_addresses) = spec.apiserver_sans();
    let serving = ca
        .issue(
            &LeafRequest {
                common_name: "kube-apiserver".into(),
                organizations: Vec::new(),
                dns_names,
                ip_addresses,
                usage: Usage::Server,
            },
            env.now,
        )
        .map_err(|e| {
            Failure(format!(
                "[certs] failed to create the apiserver certificate: {e}"
            ))
        })?;
    write_pair(env, "apiserver", &serving)?;
    let kubelet_client = ca
        .issue(
            &LeafRequest::client("kube-apiserver-kubelet-client", &["kubeadm:cluster-admins"]),
            env.now,
        )
        .map_err(|e| {
            Failure(format!(
                "[certs] failed to create the apiserver-kubelet-client certificate: {e}"
            ))
        })?;
    write_pair(env, "apiserver-kubelet-client", &kubelet_client)?;
    write_secret(env, "/etc/kubernetes/pki/sa.key", &sa_keys.0)?;
    write(env, "/etc/kubernetes/pki/sa.pub", &sa_keys.1)
}

/// Writes `/etc/kubernetes/<file>` for `user` in `groups`, talking to `server`.
pub fn write_kubeconfig(
    env: &Env,
    ca: &CertificateAuthority,
    file: &str,
    server: &str,
    user: &str,
    groups: &[&str],
) -> Result<(), Failure> {
    let cert = ca
        .issue(&LeafRequest::client(user, groups), env.now)
        .map_err(|e| {
            Failure(format!(
                "[kubeconfig] failed to create the certificate for {user}: {e}"
            ))
        })?;
    let config = Kubeconfig {
        server: format!("https://{server}"),
        ca_pem: ca.cert_pem().to_string(),
        user: user.to_string(),
        client_cert_pem: cert.cert_pem,
        client_key_pem: cert.key_pem,
    };
    write_secret(env, &format!("/etc/kubernetes/{file}"), &config.to_yaml())
}

/// The kubeconfig files of a control plane (admin, super-admin, controller-manager,
/// scheduler).
pub fn write_control_plane_kubeconfigs(
    env: &Env,
    ca: &CertificateAuthority,
    spec: &ControlPlaneSpec,
) -> Result<(), Failure> {
    let local = std::net::SocketAddr::new(spec.advertise_address, spec.bind_port).to_string();
    write_kubeconfig(
        env,
        ca,
        "admin.conf",
        &spec.endpoint,
        "kubernetes-admin",
        &["kubeadm:cluster-admins"],
    )?;
    write_kubeconfig(
        env,
        ca,
        "super-admin.conf",
        &spec.endpoint,
        "kubernetes-super-admin",
        &["system:masters"],
    )?;
    write_kubeconfig(
        env,
        ca,
        "controller-manager.conf",
        &local,
        "system:kube-controller-manager",
        &[],
    )?;
    write_kubeconfig(
        env,
        ca,
        "scheduler.conf",
        &local,
        "system:kube-scheduler",
        &[],
    )
}

fn pod(
    component: &str,
    image: &str,
    command: &[String],
    annotation: Option<(&str, String)>,
) -> String {
    let mut text = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n");
    if let Some((k, v)) = annotation {
        text.push_str(&format!("  annotations:\n    {k}: {v}\n"));
    }
    text.push_str(&format!(
        "  labels:\n    component: {component}\n    tier: control-plane\n  name: {component}\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n"
    ));
    for arg in command {
        text.push_str(&format!("    - {arg}\n"));
    }
    text.push_str(&format!(
        "    image: {image}\n    imagePullPolicy: IfNotPresent\n    name: {component}\n    resources: {{}}\n  hostNetwork: true\n  priority: 2000001000\n  priorityClassName: system-node-critical\n  securityContext:\n    seccompProfile:\n      type: RuntimeDefault\nstatus: {{}}\n"
    ));
    text
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The four static pod manifests of a control plane, with the real components' flags.
pub fn write_static_pods(env: &Env, spec: &ControlPlaneSpec) -> Result<(), Failure> {
    let v = &spec.version;
    let advertise = spec.advertise_address;
    let mut apiserver = strings(&["kube-apiserver"]);
    apiserver.push(format!("--advertise-address={advertise}"));
    apiserver.extend(strings(&[
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        "--client-ca-file=/etc/kubernetes/pki/ca.crt",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth=true",
        "--etcd-servers=https://127.0.0.1:2379",
        "--kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt",
        "--kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key",
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
    ]));
    apiserver.push(format!("--secure-port={}", spec.bind_port));
    apiserver.extend(strings(&[
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--service-account-key-file=/etc/kubernetes/pki/sa.pub",
        "--service-account-signing-key-file=/etc/kubernetes/pki/sa.key",
    ]));
    apiserver.push(format!(
        "--service-cluster-ip-range={}",
        spec.service_subnet
    ));
    apiserver.extend(strings(&[
        "--tls-cert-file=/etc/kubernetes/pki/apiserver.crt",
        "--tls-private-key-file=/etc/kubernetes/pki/apiserver.key",
    ]));
    let mut controller_manager = strings(&["kube-controller-manager"]);
    if !spec.pod_subnet.is_empty() {
        controller_manager.push("--allocate-node-cidrs=true".into());
    }
    controller_manager.extend(strings(&[
        "--authentication-kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--authorization-kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--bind-address=127.0.0.1",
        "--client-ca-file=/etc/kubernetes/pki/ca.crt",
    ]));
    if !spec.pod_subnet.is_empty() {
        controller_manager.push(format!("--cluster-cidr={}", spec.pod_subnet));
    }
    controller_manager.extend(strings(&[
        "--cluster-name=kubernetes",
        "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt",
        "--cluster-signing-key-file=/etc/kubernetes/pki/ca.key",
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--kubeconfig=/etc/kubernetes/controller-manager.conf",
        "--leader-elect=true",
        "--root-ca-file=/etc/kubernetes/pki/ca.crt",
        "--service-account-private-key-file=/etc/kubernetes/pki/sa.key",
    ]));
    controller_manager.push(format!(
        "--service-cluster-ip-range={}",
        spec.service_subnet
    ));
    controller_manager.push("--use-service-account-credentials=true".into());
    let scheduler = strings(&[
        "kube-scheduler",
        "--authentication-kubeconfig=/etc/kubernetes/scheduler.conf",
        "--authorization-kubeconfig=/etc/kubernetes/scheduler.conf",
        "--bind-address=127.0.0.1",
        "--kubeconfig=/etc/kubernetes/scheduler.conf",
        "--leader-elect=true",
    ]);
    let etcd = vec![
        "etcd".to_string(),
        format!("--advertise-client-urls=https://{advertise}:2379"),
        "--data-dir=/var/lib/etcd".to_string(),
        format!("--listen-client-urls=https://127.0.0.1:2379,https://{advertise}:2379"),
        format!("--name={}", spec.node_name),
    ];
    let endpoint = std::net::SocketAddr::new(advertise, spec.bind_port).to_string();
    for (component, image, command, annotation) in [
        (
            "etcd",
            format!("registry.k8s.io/etcd:{ETCD_TAG}"),
            etcd,
            Some((
                "kubeadm.kubernetes.io/etcd.advertise-client-urls",
                format!("https://{advertise}:2379"),
            )),
        ),
        (
            "kube-apiserver",
            format!("registry.k8s.io/kube-apiserver:{v}"),
            apiserver,
            Some((
                "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint",
                endpoint,
            )),
        ),
        (
            "kube-controller-manager",
            format!("registry.k8s.io/kube-controller-manager:{v}"),
            controller_manager,
            None,
        ),
        (
            "kube-scheduler",
            format!("registry.k8s.io/kube-scheduler:{v}"),
            scheduler,
            None,
        ),
    ] {
        write(
            env,
            &format!("/etc/kubernetes/manifests/{component}.yaml"),
            &pod(component, &image, &command, annotation),
        )?;
    }
    Ok(())
}

/// The kubelet's configuration and flags, and the node name kubeadm registered.
pub fn write_kubelet_files(env: &Env, node_name: &str) -> Result<(), Failure> {
    write(
        env,
        "/var/lib/kubelet/config.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nauthentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\nauthorization:\n  mode: Webhook\ncgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\nrotateCertificates: true\nstaticPodPath: /etc/kubernetes/manifests\n",
    )?;
    write(
        env,
        "/var/lib/kubelet/kubeadm-flags.env",
        &format!(
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint={CRI_SOCKET} --hostname-override={node_name} --pod-infra-container-image={PAUSE_IMAGE}\"\n"
        ),
    )?;
    std::fs::create_dir_all(path(env, "/etc/kubernetes/manifests"))
        .map_err(|e| Failure(format!("failed to create /etc/kubernetes/manifests: {e}")))?;
    write(env, "/var/lib/kubelet/kubesim-node", node_name)
}
