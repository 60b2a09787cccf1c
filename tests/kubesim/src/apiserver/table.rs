//! Server-side printing: the `meta.k8s.io/v1` `Table` that kubectl asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) when it prints objects, with the
//! columns of the real API server for nodes, pods, workloads, services, namespaces, config maps
//! and secrets, and `NAME`/`AGE` for the rest. `-o wide` shows the columns of priority 1.

use serde_json::{Value, json};

use crate::clock::{human_duration, parse_rfc3339};

/// A column: (name, type, priority, description).
type Column = (&'static str, &'static str, u8, &'static str);

fn columns_for(kind: &str) -> Vec<Column> {
    let name: Column = (
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age: Column = (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    let containers: Column = (
        "Containers",
        "string",
        1,
        "Names of each container in the template.",
    );
    let images: Column = (
        "Images",
        "string",
        1,
        "Images referenced by each container in the template.",
    );
    let selector: Column = ("Selector", "string", 1, "Label selector for pods.");
    match kind {
        "Node" => vec![
            name,
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            age,
            (
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
            (
                "Internal-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            (
                "External-IP",
                "string",
                1,
                "List of addresses reachable to the node.",
            ),
            (
                "OS-Image",
                "string",
                1,
                "OS Image reported by the node from /etc/os-release.",
            ),
            (
                "Kernel-Version",
                "string",
                1,
                "Kernel Version reported by the node from 'uname -r'.",
            ),
            (
                "Container-Runtime",
                "string",
                1,
                "Container Runtime Version reported by the node through runtime remote API.",
            ),
        ],
        "Pod" => vec![
            name,
            (
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            (
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            (
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age,
            ("IP", "string", 1, "IP address allocated to the pod."),
            (
                "Node",
                "string",
                1,
                "Name of the node this pod is running on.",
            ),
            (
                "Nominated Node",
                "string",
                1,
                "Name of the node this pod is nominated to run on.",
            ),
            ("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        "Deployment" => vec![
            name,
            ("Ready", "string", 0, "Number of the pod with ready state"),
            (
                "Up-to-date",
                "integer",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            (
                "Available",
                "integer",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            age,
            containers,
            images,
            selector,
        ],
        "DaemonSet" => vec![
            name,
            (
                "Desired",
                "integer",
                0,
                "The total number of nodes that should be running the daemon pod.",
            ),
            (
                "Current",
                "integer",
                0,
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and ready.",
            ),
            (
                "Up-to-date",
                "integer",
                0,
                "The total number of nodes that are running updated daemon pod",
            ),
            (
                "Available",
                "integer",
                0,
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
            ),
            (
                "Node Selector",
                "string",
                0,
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
            ),
            age,
            containers,
            images,
            selector,
        ],
        "ReplicaSet" => vec![
            name,
            (
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ),
            (
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            (
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            age,
            containers,
            images,
            selector,
        ],
        "Namespace" => vec![
            name,
            ("Status", "string", 0, "The status of the namespace"),
            age,
        ],
        "Service" => vec![
            name,
            ("Type", "string", 0, "The type of the service."),
            ("Cluster-IP", "string", 0, "The IP address of the service."),
            (
                "External-IP",
                "string",
                0,
                "The external IP address of the service.",
            ),
            ("Port(s)", "string", 0, "The ports of the service."),
            age,
            (
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        "ConfigMap" => vec![
            name,
            (
                "Data",
                "integer",
                0,
                "Data contains the configuration data.",
            ),
            age,
        ],
        "Secret" => vec![
            name,
            (
                "Type",
                "string",
                0,
                "Used to facilitate programmatic handling of secret data.",
            ),
            ("Data", "integer", 0, "Data contains the secret data."),
            age,
        ],
        _ => vec![name, age],
    }
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn age(obj: &Value, now: u64) -> String {
    parse_rfc3339(text(obj, "/metadata/creationTimestamp")).map_or("<unknown>".into(), |t| {
        human_duration(now.saturating_sub(t))
    })
}

fn template_containers(obj: &Value) -> (String, String) {
    let containers = obj
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| text(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| text(c, "/image")).collect();
    (names.join(","), images.join(","))
}

fn selector_text(obj: &Value) -> String {
    let labels = obj
        .pointer("/spec/selector/matchLabels")
        .or_else(|| {
            obj.pointer("/spec/selector")
                .filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
        })
        .and_then(Value::as_object);
    or_none(
        labels
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    )
}

/// The node's STATUS column (`Ready`, `NotReady`, `Unknown`, `,SchedulingDisabled`).
pub fn node_status(node: &Value) -> String {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| text(c, "/type") == "Ready"))
        .map(|c| text(c, "/status"));
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                        .or_else(|| {
                            (k == "kubernetes.io/role")
                                .then(|| v.as_str().unwrap_or_default().to_string())
                        })
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    or_none(roles.join(","))
}

fn node_address(node: &Value, kind: &str) -> String {
    or_none(
        node.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| text(x, "/type") == kind))
            .map(|x| text(x, "/address").to_string())
            .unwrap_or_default(),
    )
}

/// The pod's STATUS column.
pub fn pod_status(pod: &Value) -> String {
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
    {
        return "Terminating".into();
    }
    let waiting = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find_map(|c| c.pointer("/state/waiting/reason").and_then(Value::as_str))
        });
    if let Some(reason) = waiting {
        return reason.to_string();
    }
    let reason = text(pod, "/status/reason");
    if !reason.is_empty() {
        return reason.to_string();
    }
    or_none(text(pod, "/status/phase").to_string())
}

fn cells(obj: &Value, kind: &str, now: u64) -> Vec<Value> {
    let name = json!(text(obj, "/metadata/name"));
    let age = json!(age(obj, now));
    match kind {
        "Node" => vec![
            name,
            json!(node_status(obj)),
            json!(node_roles(obj)),
            age,
            json!(text(obj, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(obj, "InternalIP")),
            json!(node_address(obj, "ExternalIP")),
            json!(or_none(text(obj, "/status/nodeInfo/osImage").into())),
            json!(or_none(text(obj, "/status/nodeInfo/kernelVersion").into())),
            json!(or_none(
                text(obj, "/status/nodeInfo/containerRuntimeVersion").into()
            )),
        ],
        "Pod" => {
            let total = obj
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let statuses = obj
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| int(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(obj)),
                json!(restarts.to_string()),
                age,
                json!(or_none(text(obj, "/status/podIP").into())),
                json!(or_none(text(obj, "/spec/nodeName").into())),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Deployment" => {
            let (c, i) = template_containers(obj);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int(obj, "/status/readyReplicas"),
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(int(obj, "/status/updatedReplicas")),
                json!(int(obj, "/status/availableReplicas")),
                age,
                json!(c),
                json!(i),
                json!(selector_text(obj)),
            ]
        }
        "DaemonSet" => {
            let (c, i) = template_containers(obj);
            let node_selector = obj
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(int(obj, "/status/desiredNumberScheduled")),
                json!(int(obj, "/status/currentNumberScheduled")),
                json!(int(obj, "/status/numberReady")),
                json!(int(obj, "/status/updatedNumberScheduled")),
                json!(int(obj, "/status/numberAvailable")),
                json!(or_none(node_selector)),
                age,
                json!(c),
                json!(i),
                json!(selector_text(obj)),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = template_containers(obj);
            vec![
                name,
                json!(
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
                json!(int(obj, "/status/replicas")),
                json!(int(obj, "/status/readyReplicas")),
                age,
                json!(c),
                json!(i),
                json!(selector_text(obj)),
            ]
        }
        "Namespace" => vec![name, json!(text(obj, "/status/phase")), age],
        "Service" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let protocol =
                                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{}:{np}/{protocol}", int(p, "/port")),
                                None => format!("{}/{protocol}", int(p, "/port")),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let selector = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(text(obj, "/spec/type")),
                json!(or_none(text(obj, "/spec/clusterIP").into())),
                json!("<none>"),
                json!(or_none(ports.join(","))),
                age,
                json!(or_none(selector)),
            ]
        }
        "ConfigMap" => {
            let count = ["/data", "/binaryData"]
                .iter()
                .filter_map(|p| obj.pointer(p).and_then(Value::as_object))
                .map(serde_json::Map::len)
                .sum::<usize>();
            vec![name, json!(count), age]
        }
        "Secret" => {
            let count = obj
                .pointer("/data")
                .and_then(Value::as_object)
                .map_or(0, serde_json::Map::len);
            vec![name, json!(text(obj, "/type")), json!(count), age]
        }
        _ => vec![name, age],
    }
}

/// How much of each object a row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

/// A `Table` of `objects` of `kind`; `table_version` is `v1` or `v1beta1`.
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    now: u64,
    include: IncludeObject,
    table_version: &str,
) -> Value {
    let columns: Vec<Value> = columns_for(kind)
        .into_iter()
        .enumerate()
        .map(|(i, (name, ty, priority, description))| {
            json!({
                "name": name,
                "type": ty,
                "format": if i == 0 { "name" } else { "" },
                "description": description,
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": format!("meta.k8s.io/{table_version}"),
                    "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                }),
                IncludeObject::Object => obj.clone(),
            };
            json!({"cells": cells(obj, kind, now), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": format!("meta.k8s.io/{table_version}"),
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_print_status_roles_and_version() {
        let node = json!({"metadata": {"name": "cp-1", "creationTimestamp": "2027-01-15T08:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.5"}],
                "nodeInfo": {"kubeletVersion": "v1.33.1"}}});
        let t = table(
            "Node",
            &[node],
            "7",
            1_800_000_090,
            IncludeObject::Metadata,
            "v1",
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], "NotReady,SchedulingDisabled");
        assert_eq!(cells[2], "control-plane");
        assert_eq!(cells[3], "90s");
        assert_eq!(cells[4], "v1.33.1");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
    }
}
