//! The API's resource types and its discovery documents (`/api`, `/apis`, `/api/v1`,
//! `/apis/<group>/<version>`), as kubectl reads them to map kinds to URLs.
//!
//! The built-in table covers what kubeadm, CNI and dashboard manifests use; every
//! CustomResourceDefinition in the store adds its served versions, as on a real server.

use serde_json::{Value, json};

use crate::store::Objects;

/// The resource key of CustomResourceDefinitions in the store.
pub const CRD_RESOURCE: &str = "customresourcedefinitions.apiextensions.k8s.io";

/// The verbs of an ordinary resource.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// A sub-resource (`pods/eviction`, `deployments/scale`, `*/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    /// `status`, `scale`, `eviction`.
    pub name: String,
    /// Its kind (`Eviction`), when it differs from the parent's.
    pub kind: Option<(String, String, String)>,
    /// Verbs.
    pub verbs: Vec<String>,
}

/// One resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// API group ("" for the core group).
    pub group: String,
    /// Served versions, the preferred one first.
    pub versions: Vec<String>,
    /// Plural name (`deployments`): the URL segment.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`deploy`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Sub-resources.
    pub subresources: Vec<Subresource>,
}

impl Resource {
    /// The store key: `plural` for the core group, else `plural.group`.
    pub fn key(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `apiVersion` for `version` (`v1`, `apps/v1`).
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    /// Whether `name` is one of its sub-resources.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// (group, versions, plural, singular, kind, namespaced, short names, sub-resources, in "all").
type Row = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
    bool,
);

const BUILTIN: &[Row] = &[
    (
        "",
        &["v1"],
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        &["cm"],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "limitranges",
        "limitrange",
        "LimitRange",
        true,
        &["limits"],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "namespaces",
        "namespace",
        "Namespace",
        false,
        &["ns"],
        &["status", "finalize"],
        false,
    ),
    (
        "",
        &["v1"],
        "nodes",
        "node",
        "Node",
        false,
        &["no"],
        &["status"],
        false,
    ),
    (
        "",
        &["v1"],
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        &["status"],
        false,
    ),
    (
        "",
        &["v1"],
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        &["pv"],
        &["status"],
        false,
    ),
    (
        "",
        &["v1"],
        "pods",
        "pod",
        "Pod",
        true,
        &["po"],
        &["status", "eviction"],
        true,
    ),
    (
        "",
        &["v1"],
        "podtemplates",
        "podtemplate",
        "PodTemplate",
        true,
        &[],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        &["rc"],
        &["status", "scale"],
        true,
    ),
    (
        "",
        &["v1"],
        "resourcequotas",
        "resourcequota",
        "ResourceQuota",
        true,
        &["quota"],
        &["status"],
        false,
    ),
    (
        "",
        &["v1"],
        "secrets",
        "secret",
        "Secret",
        true,
        &[],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        &["sa"],
        &[],
        false,
    ),
    (
        "",
        &["v1"],
        "services",
        "service",
        "Service",
        true,
        &["svc"],
        &["status"],
        true,
    ),
    (
        "admissionregistration.k8s.io",
        &["v1"],
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
        &[],
        &[],
        false,
    ),
    (
        "admissionregistration.k8s.io",
        &["v1"],
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        false,
        &[],
        &[],
        false,
    ),
    (
        "apiextensions.k8s.io",
        &["v1"],
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        &["status"],
        false,
    ),
    (
        "apiregistration.k8s.io",
        &["v1"],
        "apiservices",
        "apiservice",
        "APIService",
        false,
        &[],
        &["status"],
        false,
    ),
    (
        "apps",
        &["v1"],
        "controllerrevisions",
        "controllerrevision",
        "ControllerRevision",
        true,
        &[],
        &[],
        false,
    ),
    (
        "apps",
        &["v1"],
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        &["ds"],
        &["status"],
        true,
    ),
    (
        "apps",
        &["v1"],
        "deployments",
        "deployment",
        "Deployment",
        true,
        &["deploy"],
        &["status", "scale"],
        true,
    ),
    (
        "apps",
        &["v1"],
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        &["rs"],
        &["status", "scale"],
        true,
    ),
    (
        "apps",
        &["v1"],
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        &["sts"],
        &["status", "scale"],
        true,
    ),
    (
        "autoscaling",
        &["v2", "v1"],
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        &["status"],
        true,
    ),
    (
        "batch",
        &["v1"],
        "cronjobs",
        "cronjob",
        "CronJob",
        true,
        &["cj"],
        &["status"],
        true,
    ),
    (
        "batch",
        &["v1"],
        "jobs",
        "job",
        "Job",
        true,
        &[],
        &["status"],
        true,
    ),
    (
        "certificates.k8s.io",
        &["v1"],
        "certificatesigningrequests",
        "certificatesigningrequest",
        "CertificateSigningRequest",
        false,
        &["csr"],
        &["status", "approval"],
        false,
    ),
    (
        "coordination.k8s.io",
        &["v1"],
        "leases",
        "lease",
        "Lease",
        true,
        &[],
        &[],
        false,
    ),
    (
        "discovery.k8s.io",
        &["v1"],
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        &[],
        &[],
        false,
    ),
    (
        "events.k8s.io",
        &["v1"],
        "events",
        "event",
        "Event",
        true,
        &["ev"],
        &[],
        false,
    ),
    (
        "networking.k8s.io",
        &["v1"],
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        false,
        &[],
        &[],
        false,
    ),
    (
        "networking.k8s.io",
        &["v1"],
        "ingresses",
        "ingress",
        "Ingress",
        true,
        &["ing"],
        &["status"],
        false,
    ),
    (
        "networking.k8s.io",
        &["v1"],
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        &["netpol"],
        &[],
        false,
    ),
    (
        "node.k8s.io",
        &["v1"],
        "runtimeclasses",
        "runtimeclass",
        "RuntimeClass",
        false,
        &[],
        &[],
        false,
    ),
    (
        "policy",
        &["v1"],
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        &["status"],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        &[],
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        &[],
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        &[],
        &[],
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        &["v1"],
        "roles",
        "role",
        "Role",
        true,
        &[],
        &[],
        false,
    ),
    (
        "scheduling.k8s.io",
        &["v1"],
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
        &["pc"],
        &[],
        false,
    ),
    (
        "storage.k8s.io",
        &["v1"],
        "csidrivers",
        "csidriver",
        "CSIDriver",
        false,
        &[],
        &[],
        false,
    ),
    (
        "storage.k8s.io",
        &["v1"],
        "csinodes",
        "csinode",
        "CSINode",
        false,
        &[],
        &[],
        false,
    ),
    (
        "storage.k8s.io",
        &["v1"],
        "csistoragecapacities",
        "csistoragecapacity",
        "CSIStorageCapacity",
        true,
        &[],
        &[],
        false,
    ),
    (
        "storage.k8s.io",
        &["v1"],
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        &["sc"],
        &[],
        false,
    ),
    (
        "storage.k8s.io",
        &["v1"],
        "volumeattachments",
        "volumeattachment",
        "VolumeAttachment",
        false,
        &[],
        &["status"],
        false,
    ),
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn subresource(name: &str) -> Subresource {
    match name {
        "eviction" => Subresource {
            name: name.into(),
            kind: Some(("policy".into(), "v1".into(), "Eviction".into())),
            verbs: strings(&["create"]),
        },
        "scale" => Subresource {
            name: name.into(),
            kind: Some(("autoscaling".into(), "v1".into(), "Scale".into())),
            verbs: strings(&["get", "patch", "update"]),
        },
        "finalize" => Subresource {
            name: name.into(),
            kind: None,
            verbs: strings(&["update"]),
        },
        _ => Subresource {
            name: name.into(),
            kind: None,
            verbs: strings(&["get", "patch", "update"]),
        },
    }
}

/// The resource types a server offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    resources: Vec<Resource>,
}

impl Registry {
    /// The built-in types only.
    pub fn builtin() -> Registry {
        let resources = BUILTIN
            .iter()
            .map(
                |&(group, versions, plural, singular, kind, namespaced, short, subs, all)| {
                    Resource {
                        group: group.into(),
                        versions: strings(versions),
                        plural: plural.into(),
                        singular: singular.into(),
                        kind: kind.into(),
                        namespaced,
                        short_names: strings(short),
                        categories: if all { strings(&["all"]) } else { Vec::new() },
                        subresources: subs.iter().map(|s| subresource(s)).collect(),
                    }
                },
            )
            .collect();
        Registry { resources }
    }

    /// The built-in types and every CustomResourceDefinition in `objects`.
    pub fn with_crds(objects: &Objects) -> Registry {
        let mut registry = Registry::builtin();
        for crd in objects.list(CRD_RESOURCE, None) {
            if let Some(resource) = crd_resource(crd)
                && registry.find(&resource.group, &resource.plural).is_none()
            {
                registry.resources.push(resource);
            }
        }
        registry
    }

    /// Every type.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The type `plural` in `group` (any version).
    pub fn find(&self, group: &str, plural: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural)
    }

    /// The type served at `group`/`version` as `plural`.
    pub fn find_served(&self, group: &str, version: &str, plural: &str) -> Option<&Resource> {
        self.find(group, plural)
            .filter(|r| r.versions.iter().any(|v| v == version))
    }

    /// The type of `kind` in `group`.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.kind == kind)
    }

    /// Groups (without the core group) with their versions, preferred first, sorted by name
    /// after the built-in order of Kubernetes' own groups.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for r in &self.resources {
            if r.group.is_empty() {
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, versions)) => {
                    for v in &r.versions {
                        if !versions.contains(v) {
                            versions.push(v.clone());
                        }
                    }
                }
                None => groups.push((r.group.clone(), r.versions.clone())),
            }
        }
        groups
    }

    /// `GET /api`.
    pub fn api_versions(&self, server_address: &str) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        })
    }

    fn group_doc(name: &str, versions: &[String]) -> Value {
        let list: Vec<Value> = versions
            .iter()
            .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
            .collect();
        json!({
            "name": name,
            "versions": list,
            "preferredVersion": list.first().cloned().unwrap_or(Value::Null),
        })
    }

    /// `GET /apis`.
    pub fn api_group_list(&self) -> Value {
        let groups: Vec<Value> = self
            .groups()
            .iter()
            .map(|(name, versions)| Registry::group_doc(name, versions))
            .collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `GET /apis/<group>`.
    pub fn api_group(&self, group: &str) -> Option<Value> {
        let (name, versions) = self.groups().into_iter().find(|(g, _)| g == group)?;
        let mut doc = Registry::group_doc(&name, &versions);
        doc["kind"] = json!("APIGroup");
        doc["apiVersion"] = json!("v1");
        Some(doc)
    }

    /// `GET /api/v1` or `GET /apis/<group>/<version>`.
    pub fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let mut resources = Vec::new();
        for r in self
            .resources
            .iter()
            .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
        {
            let mut doc = json!({
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ALL_VERBS,
            });
            if !r.short_names.is_empty() {
                doc["shortNames"] = json!(r.short_names);
            }
            if !r.categories.is_empty() {
                doc["categories"] = json!(r.categories);
            }
            resources.push(doc);
            for s in &r.subresources {
                let mut sub = json!({
                    "name": format!("{}/{}", r.plural, s.name),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": s.verbs,
                });
                if let Some((g, v, k)) = &s.kind {
                    sub["group"] = json!(g);
                    sub["version"] = json!(v);
                    sub["kind"] = json!(k);
                }
                resources.push(sub);
            }
        }
        if resources.is_empty() {
            return None;
        }
        let group_version = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }))
    }
}

/// The resource type a CRD defines, if it is well formed.
fn crd_resource(crd: &Value) -> Option<Resource> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let list = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let plural = text(names.get("plural"))?;
    let kind = text(names.get("kind"))?;
    let mut versions: Vec<(bool, String, bool)> = spec
        .get("versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("served").and_then(Value::as_bool).unwrap_or(true))
                .filter_map(|v| {
                    Some((
                        v.get("storage").and_then(Value::as_bool).unwrap_or(false),
                        text(v.get("name"))?,
                        v.pointer("/subresources/status").is_some(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if versions.is_empty() {
        versions.push((true, text(spec.get("version"))?, false));
    }
    versions.sort_by_key(|(storage, _, _)| !storage);
    let has_status = versions.iter().any(|(_, _, s)| *s);
    Some(Resource {
        group: text(spec.get("group"))?,
        versions: versions.into_iter().map(|(_, v, _)| v).collect(),
        singular: text(names.get("singular")).unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        short_names: list(names.get("shortNames")),
        categories: list(names.get("categories")),
        subresources: if has_status {
            vec![subresource("status")]
        } else {
            Vec::new()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_evictions_as_policy_v1_and_crds_join_the_groups() {
        let mut objects = Objects::default();
        objects.put(
            CRD_RESOURCE,
            json!({"metadata": {"name": "ippools.crd.projectcalico.org"}, "spec": {
                "group": "crd.projectcalico.org", "scope": "Cluster",
                "names": {"plural": "ippools", "singular": "ippool", "kind": "IPPool", "listKind": "IPPoolList"},
                "versions": [{"name": "v1", "served": true, "storage": true}]}}),
            0,
        );
        let registry = Registry::with_crds(&objects);
        let core = registry.resource_list("", "v1").unwrap();
        let eviction = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/eviction")
            .unwrap();
        assert_eq!(eviction["group"], "policy");
        assert_eq!(eviction["version"], "v1");
        assert_eq!(eviction["kind"], "Eviction");
        let groups = registry.api_group_list();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "crd.projectcalico.org")
        );
        let ippool = registry
            .find_served("crd.projectcalico.org", "v1", "ippools")
            .unwrap();
        assert!(!ippool.namespaced);
        assert_eq!(ippool.key(), "ippools.crd.projectcalico.org");
        assert!(registry.resource_list("apps", "v2").is_none());
        assert_eq!(
            registry.api_group("autoscaling").unwrap()["preferredVersion"]["version"],
            "v2"
        );
    }
}
