//! What kubeadm puts into the API server (here: the cluster's store): the system namespaces,
//! the `kubernetes` Service, its ConfigMaps (`kubeadm-config`, `kubelet-config`,
//! `kube-public/cluster-info`), the kube-proxy DaemonSet and the CoreDNS Deployment, and the
//! Node objects it marks (`mark-control-plane`: role label and `NoSchedule` taint).

use serde_json::{Value, json};

use super::files::CRI_SOCKET;
use crate::store::Objects;

/// CoreDNS's image.
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.0";
/// The DNS service's address.
pub const DNS_SERVICE_IP: &str = "10.96.0.10";

fn put_if_missing(objects: &mut Objects, resource: &str, obj: Value, now: u64) {
    let name = crate::store::name_of(&obj).to_string();
    let namespace = crate::store::namespace_of(&obj).to_string();
    if objects.get(resource, &namespace, &name).is_none() {
        objects.put(resource, obj, now);
    }
}

/// What `kubeadm init` knows of the new cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterFacts<'a> {
    /// Kubernetes version.
    pub version: &'a str,
    /// The control-plane endpoint.
    pub endpoint: &'a str,
    /// The CA (PEM).
    pub ca_pem: &'a str,
    /// The `kubernetes` Service's IP.
    pub kubernetes_service_ip: &'a str,
    /// The pod CIDR ("" when unset).
    pub pod_subnet: &'a str,
    /// The service CIDR.
    pub service_subnet: &'a str,
}

/// Everything `kubeadm init` uploads.
pub fn seed(objects: &mut Objects, now: u64, facts: ClusterFacts<'_>) {
    let ClusterFacts {
        version,
        endpoint,
        ca_pem,
        kubernetes_service_ip,
        pod_subnet,
        service_subnet,
    } = facts;
    for ns in crate::controllers::SYSTEM_NAMESPACES {
        put_if_missing(
            objects,
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                   "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
            now,
        );
    }
    put_if_missing(
        objects,
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
               "spec": {"clusterIP": kubernetes_service_ip, "clusterIPs": [kubernetes_service_ip], "type": "ClusterIP",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                        "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}}),
        now,
    );
    use base64::Engine;
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{endpoint}\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n",
        base64::engine::general_purpose::STANDARD.encode(ca_pem)
    );
    put_if_missing(
        objects,
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
               "data": {"kubeconfig": kubeconfig}}),
        now,
    );
    update_cluster_configuration(objects, now, version, endpoint, pod_subnet, service_subnet);
    put_if_missing(
        objects,
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubelet-config", "namespace": "kube-system"},
               "data": {"kubelet": "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: systemd\nclusterDNS:\n- 10.96.0.10\nclusterDomain: cluster.local\nstaticPodPath: /etc/kubernetes/manifests\n"}}),
        now,
    );
    for (name, namespace) in [("kube-proxy", "kube-system"), ("coredns", "kube-system")] {
        put_if_missing(
            objects,
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}),
            now,
        );
    }
    put_if_missing(
        objects,
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"app": "kube-proxy"}},
               "data": {"config.conf": format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: {pod_subnet}\nmode: \"\"\n")}}),
        now,
    );
    put_if_missing(objects, "daemonsets.apps", kube_proxy(version), now);
    put_if_missing(
        objects,
        "configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
               "data": {"Corefile": ".:53 {\n    errors\n    health\n    ready\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n    }\n    forward . /etc/resolv.conf\n    cache 30\n    loop\n    reload\n}\n"}}),
        now,
    );
    put_if_missing(
        objects,
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
               "spec": {"clusterIP": DNS_SERVICE_IP, "clusterIPs": [DNS_SERVICE_IP], "type": "ClusterIP", "selector": {"k8s-app": "kube-dns"},
                        "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                  {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}],
                        "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}}),
        now,
    );
    put_if_missing(
        objects,
        "deployments.apps",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}, "generation": 1},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                     "spec": {"containers": [{"name": "coredns", "image": COREDNS_IMAGE, "args": ["-conf", "/etc/coredns/Corefile"],
                                                              "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}]}],
                                              "priorityClassName": "system-cluster-critical", "serviceAccountName": "coredns",
                                              "nodeSelector": {"kubernetes.io/os": "linux"},
                                              "volumes": [{"name": "config-volume", "configMap": {"name": "coredns"}}],
                                              "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                                              {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}}}),
        now,
    );
}

fn kube_proxy(version: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
           "metadata": {"name": "kube-proxy", "namespace": "kube-system", "labels": {"k8s-app": "kube-proxy"}, "generation": 1},
           "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                    "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                                 "spec": {"containers": [{"name": "kube-proxy", "image": format!("registry.k8s.io/kube-proxy:{version}"),
                                                          "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", "--hostname-override=$(NODE_NAME)"]}],
                                          "hostNetwork": true, "priorityClassName": "system-node-critical", "serviceAccountName": "kube-proxy",
                                          "nodeSelector": {"kubernetes.io/os": "linux"},
                                          "tolerations": [{"operator": "Exists"}]}},
                    "updateStrategy": {"type": "RollingUpdate"}}})
}

/// The `kubeadm-config` ConfigMap (ClusterConfiguration) at `version`.
pub fn update_cluster_configuration(
    objects: &mut Objects,
    now: u64,
    version: &str,
    endpoint: &str,
    pod_subnet: &str,
    service_subnet: &str,
) {
    let mut networking =
        format!("networking:\n  dnsDomain: cluster.local\n  serviceSubnet: {service_subnet}\n");
    if !pod_subnet.is_empty() {
        networking.push_str(&format!("  podSubnet: {pod_subnet}\n"));
    }
    let config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nclusterName: kubernetes\ncontrolPlaneEndpoint: {endpoint}\ncertificatesDir: /etc/kubernetes/pki\nimageRepository: registry.k8s.io\nkubernetesVersion: {version}\n{networking}"
    );
    let old = objects
        .get("configmaps", "kube-system", "kubeadm-config")
        .cloned();
    let mut cm = old.clone().unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeadm-config", "namespace": "kube-system"}})
    });
    cm["data"]["ClusterConfiguration"] = json!(config);
    if old.as_ref() != Some(&cm) {
        objects.put("configmaps", cm, now);
    }
}

/// After an upgrade to `version`: kube-proxy runs the new image (its pods are replaced).
pub fn upgrade_addons(objects: &mut Objects, now: u64, version: &str) {
    if let Some(old) = objects
        .get("daemonsets.apps", "kube-system", "kube-proxy")
        .cloned()
    {
        let mut ds = old.clone();
        ds["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!(format!("registry.k8s.io/kube-proxy:{version}"));
        if ds != old {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            ds["metadata"]["generation"] = json!(generation + 1);
            objects.put("daemonsets.apps", ds, now);
        }
    }
}

/// Creates or updates the Node `name` as kubeadm leaves it: the CRI socket annotation and,
/// for control planes, the role label and `NoSchedule` taint (`mark-control-plane`).
pub fn mark_node(objects: &mut Objects, now: u64, name: &str, control_plane: bool) {
    let old = objects.get("nodes", "", name).cloned();
    let mut node = old.clone().unwrap_or_else(|| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {}})
    });
    node["metadata"]["annotations"]["kubeadm.alpha.kubernetes.io/cri-socket"] = json!(CRI_SOCKET);
    if control_plane {
        node["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("");
        node["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"] =
            json!("");
        let mut taints = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !taints.iter().any(|t| {
            t.get("key").and_then(Value::as_str) == Some("node-role.kubernetes.io/control-plane")
        }) {
            taints.push(
                json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}),
            );
        }
        node["spec"]["taints"] = json!(taints);
    }
    if old.as_ref() != Some(&node) {
        objects.put("nodes", node, now);
    }
}
