//! One test per `createKubernetesCluster` validation rule of cks-reference §5, each asserting
//! CKS's exact text.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{Env, api_error};

/// A simulator + controller with a Ready version; `valid()` are parameters that pass.
struct Case {
    env: Env,
    zone: String,
    offering: String,
    small_offering: String,
    version: String,
}

impl Case {
    async fn start() -> Case {
        let env = Env::start().await;
        let (zone, offering, small_offering) = env.zone_and_offerings().await;
        let version = env.add_version("1.33.1", &[]).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        Case {
            env,
            zone,
            offering,
            small_offering,
            version,
        }
    }

    fn valid(&self) -> Vec<(String, String)> {
        [
            ("name", "valid"),
            ("zoneid", self.zone.as_str()),
            ("kubernetesversionid", self.version.as_str()),
            ("serviceofferingid", self.offering.as_str()),
            ("size", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Expects `createKubernetesCluster` with `valid()` changed by `set` (empty value = drop
    /// the parameter) to fail with `code` and `text`.
    async fn refuses(&self, set: &[(&str, &str)], code: u16, text: &str) {
        let mut params = self.valid();
        for (key, value) in set {
            params.retain(|(k, _)| k != key);
            if !value.is_empty() {
                params.push((key.to_string(), value.to_string()));
            }
        }
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let got = api_error(
            self.env
                .user
                .submit("createKubernetesCluster", &pairs)
                .await
                .map(|j| serde_json::json!(j.job_id)),
            code,
        );
        assert_eq!(got, text);
        let listed = self
            .env
            .user
            .call("listKubernetesClusters", &[])
            .await
            .unwrap();
        assert_eq!(
            listed,
            serde_json::json!({}),
            "a refused create left a cluster"
        );
    }

    async fn admin_set(&self, name: &str, value: &str) {
        self.env
            .admin
            .call("updateConfiguration", &[("name", name), ("value", value)])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_empty_name_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("name", "   ")],
        431,
        "Invalid name for the Kubernetes cluster name: ",
    )
    .await;
}

#[tokio::test]
async fn zero_control_nodes_are_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("controlnodes", "0")],
        431,
        "Invalid cluster control nodes count: 0",
    )
    .await;
}

#[tokio::test]
async fn a_missing_or_zero_size_is_refused() {
    let case = Case::start().await;
    case.refuses(&[("size", "0")], 431, "Invalid cluster size: 0")
        .await;
    case.refuses(&[("size", "")], 431, "Invalid cluster size: null")
        .await;
}

#[tokio::test]
async fn the_accounts_maximum_size_applies() {
    let case = Case::start().await;
    case.refuses(
        &[("size", "10")],
        431,
        "Maximum cluster size can not exceed 10. Please contact your administrator",
    )
    .await;
    case.admin_set("cloud.kubernetes.cluster.max.size", "2")
        .await;
    case.refuses(
        &[("size", "2")],
        431,
        "Maximum cluster size can not exceed 2. Please contact your administrator",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_zone_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("zoneid", "no-such-zone")],
        431,
        "Unable to find zone by ID: no-such-zone",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_version_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("kubernetesversionid", "no-such-version")],
        431,
        "Unable to find given Kubernetes version in supported versions",
    )
    .await;
}

#[tokio::test]
async fn a_disabled_version_is_refused() {
    let case = Case::start().await;
    case.env
        .admin
        .call(
            "updateKubernetesSupportedVersion",
            &[("id", &case.version), ("state", "Disabled")],
        )
        .await
        .unwrap();
    case.refuses(
        &[],
        431,
        &format!(
            "Kubernetes version ID: {} is in Disabled state",
            case.version
        ),
    )
    .await;
}

#[tokio::test]
async fn ha_needs_kubernetes_1_16() {
    let case = Case::start().await;
    let old = case.env.add_version("1.15.3", &[]).await;
    let old = old["id"].as_str().unwrap();
    case.refuses(
        &[("kubernetesversionid", old), ("controlnodes", "3")],
        431,
        &format!(
            "HA support is available only for Kubernetes version 1.16.0 and above. Given version ID: {old} is 1.15.3"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_version_whose_iso_is_not_ready_is_refused() {
    let case = Case::start().await;
    let bad = case
        .env
        .admin
        .call(
            "addKubernetesSupportedVersion",
            &[
                ("semanticversion", "1.33.2"),
                ("url", "file:///nonexistent/iso.iso"),
                ("mincpunumber", "2"),
                ("minmemory", "2048"),
            ],
        )
        .await
        .unwrap();
    let bad = bad["kubernetessupportedversion"]["id"].as_str().unwrap();
    case.refuses(
        &[("kubernetesversionid", bad)],
        431,
        &format!(
            "ISO associated with version ID: {bad} is not in Ready state for datacenter ID: {}",
            case.zone
        ),
    )
    .await;
}

#[tokio::test]
async fn a_missing_service_offering_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("serviceofferingid", "")],
        431,
        "When serviceofferingid is not specified, service offerings for each node type must be specified in the nodeofferings parameter.",
    )
    .await;
}

#[tokio::test]
async fn an_offering_below_2_vcpus_and_2_gb_is_refused() {
    let case = Case::start().await;
    let small = case.small_offering.clone();
    case.refuses(
        &[("serviceofferingid", &small)],
        431,
        &format!(
            "Given service offering ID: {small} for DEFAULT nodes is not suitable for the Kubernetes cluster version 1.33.1 - Kubernetes cluster cannot be created with service offering ID: {small}, Kubernetes cluster template needs minimum 2 vCPUs and 2048 MB RAM"
        ),
    )
    .await;
}

#[tokio::test]
async fn an_offering_below_the_versions_minimum_is_refused() {
    let case = Case::start().await;
    let big = case
        .env
        .add_version("1.34.0", &[("mincpunumber", "4"), ("minmemory", "4096")])
        .await;
    let big = big["id"].as_str().unwrap();
    let offering = case.offering.clone();
    case.refuses(
        &[("kubernetesversionid", big)],
        431,
        &format!(
            "Given service offering ID: {offering} for DEFAULT nodes is not suitable for the Kubernetes cluster version 1.34.0 - Kubernetes cluster cannot be created with service offering ID: {offering}, Kubernetes version ID: {big} needs minimum 4 vCPUs"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_root_disk_below_8_gb_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("noderootdisksize", "0")],
        431,
        "Invalid value for noderootdisksize",
    )
    .await;
    case.refuses(
        &[("noderootdisksize", "5")],
        431,
        "Provided node root disk size is lesser than default size of 8GB",
    )
    .await;
}

#[tokio::test]
async fn a_private_registry_needs_the_experimental_flag_and_all_three_parameters() {
    let case = Case::start().await;
    let registry = [
        ("dockerregistryurl", "https://registry.example"),
        ("dockerregistryusername", "robot"),
        ("dockerregistrypassword", "secret"),
    ];
    case.refuses(
        &registry,
        431,
        "Private registry for the Kubernetes cluster is an experimental feature. Use cloud.kubernetes.cluster.experimental.features.enabled configuration for enabling experimental features",
    )
    .await;
    case.admin_set(
        "cloud.kubernetes.cluster.experimental.features.enabled",
        "true",
    )
    .await;
    case.refuses(
        &registry[..2],
        431,
        "All the docker private registry parameters (username, password, url) required are specified",
    )
    .await;
    case.refuses(
        &[
            ("dockerregistryurl", "not a url"),
            ("dockerregistryusername", "robot"),
            ("dockerregistrypassword", "secret"),
        ],
        431,
        "Invalid docker registry url specified",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_network_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("networkid", "no-such-network")],
        431,
        "Unable to find network with given ID",
    )
    .await;
}

async fn network(
    case: &Case,
    client: &cks_controller::cloudstack::CloudStackClient,
    offering: &str,
    name: &str,
) -> String {
    let offerings = client
        .call("listNetworkOfferings", &[("name", offering)])
        .await
        .unwrap();
    let offering_id = offerings["networkoffering"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut params = vec![
        ("zoneid", case.zone.as_str()),
        ("networkofferingid", offering_id.as_str()),
        ("name", name),
        ("displaytext", name),
    ];
    if offering.contains("Shared") {
        params.extend([
            ("gateway", "10.50.0.1"),
            ("netmask", "255.255.255.0"),
            ("vlan", "50"),
        ]);
    }
    let created = client.call("createNetwork", &params).await.unwrap();
    created["network"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn an_external_load_balancer_ip_needs_a_valid_address_and_a_shared_network() {
    let case = Case::start().await;
    case.refuses(
        &[("externalloadbalanceripaddress", "300.1.2.3")],
        431,
        "Invalid external load balancer IP address",
    )
    .await;
    case.refuses(
        &[("externalloadbalanceripaddress", "192.0.2.10")],
        431,
        "externalloadbalanceripaddress parameter must be specified along with networkid parameter",
    )
    .await;
    let isolated = network(
        &case,
        &case.env.user,
        "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "isolated",
    )
    .await;
    case.refuses(
        &[
            ("externalloadbalanceripaddress", "192.0.2.10"),
            ("networkid", &isolated),
        ],
        431,
        "externalloadbalanceripaddress parameter must be specified when network type is not Shared or is ROUTED network",
    )
    .await;
}

#[tokio::test]
async fn ha_on_a_shared_network_needs_an_external_load_balancer() {
    let case = Case::start().await;
    let shared = network(
        &case,
        &case.env.admin,
        "DefaultSharedNetworkOffering",
        "shared",
    )
    .await;
    case.refuses(
        &[("networkid", &shared), ("controlnodes", "3")],
        431,
        &format!(
            "Multi-control nodes, HA Kubernetes cluster with Shared network ID: {shared} needs an external load balancer IP address. externalloadbalanceripaddress parameter can be used"
        ),
    )
    .await;
}

#[tokio::test]
async fn an_isolated_network_serves_one_cluster_only() {
    let case = Case::start().await;
    let net = network(
        &case,
        &case.env.user,
        "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "mine",
    )
    .await;
    let mut params = case.valid();
    params.push(("networkid".into(), net.clone()));
    let pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    case.env
        .user
        .submit("createKubernetesCluster", &pairs)
        .await
        .unwrap();
    // Another cluster (a request that differs: the same signed request twice is a replay).
    let mut second = pairs.clone();
    second.retain(|(k, _)| *k != "name");
    second.push(("name", "second"));
    let got = api_error(
        case.env
            .user
            .submit("createKubernetesCluster", &second)
            .await
            .map(|j| serde_json::json!(j.job_id)),
        431,
    );
    assert_eq!(
        got,
        format!("Network ID: {net} is already under use by another Kubernetes cluster")
    );
}

#[tokio::test]
async fn conflicting_rules_on_the_networks_source_nat_are_refused() {
    let case = Case::start().await;
    let user = &case.env.user;
    let net = network(
        &case,
        user,
        "DefaultIsolatedNetworkOfferingWithSourceNatService",
        "busy",
    )
    .await;
    let ip = user
        .call_async(
            "associateIpAddress",
            &[("networkid", &net)],
            tokio::time::Instant::now() + std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let ip_id = ip["ipaddress"]["id"].as_str().unwrap().to_string();
    assert_eq!(ip["ipaddress"]["issourcenat"], true);
    user.call_async(
        "createFirewallRule",
        &[
            ("ipaddressid", &ip_id),
            ("protocol", "tcp"),
            ("startport", "6000"),
            ("endport", "7000"),
            ("cidrlist", "0.0.0.0/0"),
        ],
        tokio::time::Instant::now() + std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    case.refuses(
        &[("networkid", &net)],
        431,
        &format!(
            "Network: {net} has conflicting firewall rules to provision Kubernetes cluster for API access"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_missing_network_offering_means_the_service_is_not_configured() {
    let case = Case::start().await;
    case.admin_set(
        "cloud.kubernetes.cluster.network.offering",
        "NoSuchOffering",
    )
    .await;
    case.refuses(
        &[],
        431,
        "Kubernetes service has not been configured properly to provision Kubernetes clusters",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_cluster_type_is_refused() {
    let case = Case::start().await;
    case.refuses(
        &[("clustertype", "Imaginary")],
        431,
        "Unable to resolve cluster type Imaginary to a supported value (CloudManaged, ExternalManaged)",
    )
    .await;
}
