//! The CloudStack operations the controller performs, in its own words: typed, scoped to the
//! cluster owner's account, and written so a workflow step can look up what an earlier,
//! interrupted run of the same step already made.
//!
//! The controller calls CloudStack with its service (admin) keys and creates every resource in
//! the cluster owner's account (`account` + `domainid`), as CKS does. Each resource it makes is
//! tagged `cks.cluster=<cluster id>` (VMs, networks, firewall, load balancer and port
//! forwarding rules) or carries the cluster id in its name or description, so a resumed step or
//! a delete finds it, and tells it from what the owner made beside it.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cloudstack::client::decode_field;
use crate::cloudstack::types::{
    FirewallRule, Iso, LoadBalancerRule, Network, NetworkOffering, PortForwardingRule,
    PublicIpAddress, ServiceOffering, SshKeyPair, Template, VirtualMachine, Zone,
};
use crate::cloudstack::{CloudStackClient, CloudStackError};
use crate::store::Owner;

/// The tag key that marks what the controller made for a cluster.
pub const CLUSTER_TAG: &str = "cks.cluster";
/// How long one CloudStack async job may take before the step gives up waiting.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);

/// CloudStack, as the workflows use it.
#[derive(Debug, Clone)]
pub struct Cloud {
    client: CloudStackClient,
    job_timeout: Duration,
    /// The project whose resources the listings by IP, network or tag are about: CloudStack
    /// lists a project's resources only when asked with its `projectid`.
    project: Option<String>,
}

/// What a node VM is deployed with.
#[derive(Debug, Clone)]
pub struct DeployRequest<'a> {
    /// The owner.
    pub owner: &'a Owner,
    /// Zone.
    pub zone_id: &'a str,
    /// Offering.
    pub service_offering_id: &'a str,
    /// Node template.
    pub template_id: &'a str,
    /// The cluster network.
    pub network_id: &'a str,
    /// VM name = host name.
    pub name: &'a str,
    /// Userdata, plain (encoded here).
    pub userdata: &'a str,
    /// SSH key pair name.
    pub keypair: Option<&'a str>,
    /// Root disk, GB.
    pub root_disk_size: Option<u64>,
}

/// Whom a call acts for: the owning project, or the owner's account in its domain.
fn owner_params(owner: &Owner) -> Vec<(&'static str, &str)> {
    match &owner.project {
        Some(project) => vec![("projectid", project.id.as_str())],
        None => vec![("account", &owner.account), ("domainid", &owner.domain_id)],
    }
}

// === impl Cloud ===

impl Cloud {
    /// Operations over `client`.
    pub fn new(client: CloudStackClient) -> Self {
        Cloud {
            client,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            project: None,
        }
    }

    /// CloudStack as `caller` sees it: lookups signed with the caller's own keys, so that
    /// every id a caller passes is resolved by CloudStack's own visibility rules (their
    /// account, domain and role), never with the controller's admin view.
    pub fn as_caller(&self, caller: &crate::cloudstack::Caller) -> Self {
        Cloud {
            client: self.client.with_keys(&caller.api_key, &caller.secret_key),
            job_timeout: self.job_timeout,
            project: self.project.clone(),
        }
    }

    /// The same, its listings of public IPs, rules and tags scoped to `owner`: a project's
    /// cluster's resources are listed with the project's id (without it CloudStack leaves
    /// them out), an account's as before.
    pub fn for_owner(&self, owner: &Owner) -> Self {
        Cloud {
            client: self.client.clone(),
            job_timeout: self.job_timeout,
            project: owner.project.as_ref().map(|p| p.id.clone()),
        }
    }

    /// `params` with the owner's project, when the resources listed are a project's.
    fn scoped<'a>(&'a self, mut params: Vec<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
        if let Some(project) = &self.project {
            params.push(("projectid", project));
        }
        params
    }

    /// The client (for the API endpoint's proxy and identity lookups).
    pub fn client(&self) -> &CloudStackClient {
        &self.client
    }

    async fn job(&self, command: &str, params: &[(&str, &str)]) -> Result<Value, CloudStackError> {
        self.client
            .call_async(command, params, Instant::now() + self.job_timeout)
            .await
    }

    /// The first item of a list (by id, usually), or none.
    async fn first<T: crate::cloudstack::types::ListResource>(
        &self,
        params: &[(&str, &str)],
    ) -> Result<Option<T>, CloudStackError> {
        match self.client.list_all::<T>(params).await {
            Ok(items) => Ok(items.into_iter().next()),
            // CloudStack answers a list by an id it does not know with 431, and a caller
            // whose role may not list such things with 432 or 531: nothing found (for them).
            Err(err) if matches!(err.errorcode(), Some(431 | 432 | 531)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A zone.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn zone(&self, id: &str) -> Result<Option<Zone>, CloudStackError> {
        self.first::<Zone>(&[("id", id)]).await
    }

    /// A service offering.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn service_offering(
        &self,
        id: &str,
    ) -> Result<Option<ServiceOffering>, CloudStackError> {
        self.first::<ServiceOffering>(&[("id", id)]).await
    }

    /// An executable template by id or name, in a zone.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn template(
        &self,
        id_or_name: &str,
        zone_id: &str,
    ) -> Result<Option<Template>, CloudStackError> {
        let templates = self
            .client
            .list_all::<Template>(&[("templatefilter", "executable"), ("zoneid", zone_id)])
            .await?;
        Ok(templates
            .into_iter()
            .find(|t| t.id == id_or_name || t.name == id_or_name))
    }

    /// An ISO.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn iso(&self, id: &str) -> Result<Option<Iso>, CloudStackError> {
        self.first::<Iso>(&[("id", id), ("isofilter", "all")]).await
    }

    /// Registers a version's binaries ISO (public, not bootable), as CKS does.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn register_iso(
        &self,
        name: &str,
        url: &str,
        zone_id: Option<&str>,
        checksum: Option<&str>,
        arch: &str,
        direct_download: bool,
    ) -> Result<Iso, CloudStackError> {
        let direct = if direct_download { "true" } else { "false" };
        let mut params = vec![
            ("name", name),
            ("displaytext", name),
            ("url", url),
            ("zoneid", zone_id.unwrap_or("-1")),
            ("ispublic", "true"),
            ("bootable", "false"),
            ("directdownload", direct),
            ("arch", arch),
        ];
        if let Some(checksum) = checksum {
            params.push(("checksum", checksum));
        }
        let value = self.client.call("registerIso", &params).await?;
        let isos: Vec<Iso> = decode_field("registerIso", &value, "iso")?;
        isos.into_iter()
            .next()
            .ok_or_else(|| CloudStackError::MissingField {
                command: "registerIso".into(),
                field: "iso".into(),
            })
    }

    /// Deletes an ISO.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn delete_iso(&self, id: &str) -> Result<(), CloudStackError> {
        self.job("deleteIso", &[("id", id)]).await.map(drop)
    }

    /// A network.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn network(&self, id: &str) -> Result<Option<Network>, CloudStackError> {
        self.first::<Network>(&[("id", id), ("listall", "true")])
            .await
    }

    /// A network offering by name.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn network_offering(
        &self,
        name: &str,
    ) -> Result<Option<NetworkOffering>, CloudStackError> {
        let offerings = self
            .client
            .list_all::<NetworkOffering>(&[("name", name)])
            .await?;
        Ok(offerings.into_iter().find(|o| o.name == name))
    }

    /// The owner's networks whose description names `marker` (a cluster id).
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn networks_marked(
        &self,
        owner: &Owner,
        marker: &str,
    ) -> Result<Vec<Network>, CloudStackError> {
        let networks = self
            .client
            .list_all::<Network>(&owner_params(owner))
            .await?;
        Ok(networks
            .into_iter()
            .filter(|n| n.displaytext.as_deref().is_some_and(|d| d.contains(marker)))
            .collect())
    }

    /// Creates an isolated network for a cluster.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn create_network(
        &self,
        owner: &Owner,
        zone_id: &str,
        offering_id: &str,
        name: &str,
        displaytext: &str,
    ) -> Result<Network, CloudStackError> {
        let mut params = vec![
            ("zoneid", zone_id),
            ("networkofferingid", offering_id),
            ("name", name),
            ("displaytext", displaytext),
        ];
        params.extend(owner_params(owner));
        let value = self.client.call("createNetwork", &params).await?;
        decode_field("createNetwork", &value, "network")
    }

    /// Deletes a network (forced, as CKS does).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn delete_network(&self, id: &str) -> Result<(), CloudStackError> {
        self.job("deleteNetwork", &[("id", id), ("forced", "true")])
            .await
            .map(drop)
    }

    /// The public IPs of a network.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn public_ips(
        &self,
        network_id: &str,
    ) -> Result<Vec<PublicIpAddress>, CloudStackError> {
        self.client
            .list_all::<PublicIpAddress>(&self.scoped(vec![
                ("associatednetworkid", network_id),
                ("listall", "true"),
            ]))
            .await
    }

    /// Acquires a public IP for a network (the first one becomes its source NAT).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn associate_ip(
        &self,
        owner: &Owner,
        network_id: &str,
    ) -> Result<PublicIpAddress, CloudStackError> {
        let mut params = vec![("networkid", network_id)];
        params.extend(owner_params(owner));
        let value = self.job("associateIpAddress", &params).await?;
        decode_field("associateIpAddress", &value, "ipaddress")
    }

    /// Firewall rules on a public IP.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn firewall_rules(&self, ip_id: &str) -> Result<Vec<FirewallRule>, CloudStackError> {
        self.client
            .list_all::<FirewallRule>(
                &self.scoped(vec![("ipaddressid", ip_id), ("listall", "true")]),
            )
            .await
    }

    /// Opens TCP `start..=end` on a public IP from anywhere; the rule made (its id is what a
    /// tag needs).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn create_firewall_rule(
        &self,
        ip_id: &str,
        start: u16,
        end: u16,
    ) -> Result<FirewallRule, CloudStackError> {
        let (start, end) = (start.to_string(), end.to_string());
        let value = self
            .job(
                "createFirewallRule",
                &[
                    ("ipaddressid", ip_id),
                    ("protocol", "tcp"),
                    ("startport", &start),
                    ("endport", &end),
                    ("cidrlist", "0.0.0.0/0"),
                ],
            )
            .await?;
        decode_field("createFirewallRule", &value, "firewallrule")
    }

    /// Deletes a firewall rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn delete_firewall_rule(&self, id: &str) -> Result<(), CloudStackError> {
        self.job("deleteFirewallRule", &[("id", id)])
            .await
            .map(drop)
    }

    /// Load balancer rules on a public IP.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn lb_rules(&self, ip_id: &str) -> Result<Vec<LoadBalancerRule>, CloudStackError> {
        self.client
            .list_all::<LoadBalancerRule>(
                &self.scoped(vec![("publicipid", ip_id), ("listall", "true")]),
            )
            .await
    }

    /// Creates CKS's `api-lb` rule: `port → port`, TCP, round robin, no automatic firewall rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn create_lb_rule(
        &self,
        ip_id: &str,
        network_id: &str,
        name: &str,
        description: &str,
        port: u16,
    ) -> Result<LoadBalancerRule, CloudStackError> {
        let port = port.to_string();
        let value = self
            .job(
                "createLoadBalancerRule",
                &[
                    ("name", name),
                    ("description", description),
                    ("publicipid", ip_id),
                    ("networkid", network_id),
                    ("privateport", &port),
                    ("publicport", &port),
                    ("algorithm", "roundrobin"),
                    ("protocol", "tcp"),
                    ("openfirewall", "false"),
                ],
            )
            .await?;
        decode_field("createLoadBalancerRule", &value, "loadbalancer")
    }

    /// Adds VMs to a load balancer rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn assign_to_lb(
        &self,
        rule_id: &str,
        vm_ids: &[&str],
    ) -> Result<(), CloudStackError> {
        let ids = vm_ids.join(",");
        self.job(
            "assignToLoadBalancerRule",
            &[("id", rule_id), ("virtualmachineids", &ids)],
        )
        .await
        .map(drop)
    }

    /// Deletes a load balancer rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn delete_lb_rule(&self, id: &str) -> Result<(), CloudStackError> {
        self.job("deleteLoadBalancerRule", &[("id", id)])
            .await
            .map(drop)
    }

    /// Port forwarding rules on a public IP.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn pf_rules(&self, ip_id: &str) -> Result<Vec<PortForwardingRule>, CloudStackError> {
        self.client
            .list_all::<PortForwardingRule>(
                &self.scoped(vec![("ipaddressid", ip_id), ("listall", "true")]),
            )
            .await
    }

    /// Forwards `public_port` of a public IP to `private_port` of a VM; the rule made.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn create_pf_rule(
        &self,
        ip_id: &str,
        network_id: &str,
        vm_id: &str,
        public_port: u16,
        private_port: u16,
    ) -> Result<PortForwardingRule, CloudStackError> {
        let (public, private) = (public_port.to_string(), private_port.to_string());
        let value = self
            .job(
                "createPortForwardingRule",
                &[
                    ("ipaddressid", ip_id),
                    ("networkid", network_id),
                    ("virtualmachineid", vm_id),
                    ("publicport", &public),
                    ("privateport", &private),
                    ("protocol", "tcp"),
                    ("openfirewall", "false"),
                ],
            )
            .await?;
        decode_field("createPortForwardingRule", &value, "portforwardingrule")
    }

    /// Deletes a port forwarding rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn delete_pf_rule(&self, id: &str) -> Result<(), CloudStackError> {
        self.job("deletePortForwardingRule", &[("id", id)])
            .await
            .map(drop)
    }

    /// A VM by id (any account).
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn vm(&self, id: &str) -> Result<Option<VirtualMachine>, CloudStackError> {
        self.first::<VirtualMachine>(&[("id", id), ("listall", "true")])
            .await
    }

    /// The owner's VMs called `name`.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn vms_named(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<Vec<VirtualMachine>, CloudStackError> {
        let mut params = vec![("name", name)];
        params.extend(owner_params(owner));
        let vms = self.client.list_all::<VirtualMachine>(&params).await?;
        Ok(vms.into_iter().filter(|vm| vm.name == name).collect())
    }

    /// The ids of resources of `resource_type` tagged with the cluster's id.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn tagged(
        &self,
        resource_type: &str,
        cluster_id: &str,
    ) -> Result<Vec<String>, CloudStackError> {
        let tags: Vec<Value> = self
            .client
            .list(
                "listTags",
                &self.scoped(vec![
                    ("resourcetype", resource_type),
                    ("key", CLUSTER_TAG),
                    ("value", cluster_id),
                    ("listall", "true"),
                ]),
                "tag",
            )
            .await?;
        let mut ids: Vec<String> = tags
            .iter()
            .filter(|t| t.get("value").and_then(Value::as_str) == Some(cluster_id))
            .filter_map(|t| t.get("resourceid").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Tags resources with the cluster's id.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn tag(
        &self,
        resource_type: &str,
        ids: &[&str],
        cluster_id: &str,
    ) -> Result<(), CloudStackError> {
        let ids = ids.join(",");
        self.job(
            "createTags",
            &[
                ("resourceids", &ids),
                ("resourcetype", resource_type),
                ("tags[0].key", CLUSTER_TAG),
                ("tags[0].value", cluster_id),
            ],
        )
        .await
        .map(drop)
    }

    /// Deploys a node VM, stopped (the ISO is attached before its first boot).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn deploy_vm(
        &self,
        request: &DeployRequest<'_>,
    ) -> Result<VirtualMachine, CloudStackError> {
        use base64::Engine as _;
        let userdata = base64::engine::general_purpose::STANDARD.encode(request.userdata);
        let disk = request.root_disk_size.map(|s| s.to_string());
        let mut params = vec![
            ("zoneid", request.zone_id),
            ("serviceofferingid", request.service_offering_id),
            ("templateid", request.template_id),
            ("networkids", request.network_id),
            ("name", request.name),
            ("displayname", request.name),
            ("userdata", &userdata),
            ("startvm", "false"),
        ];
        params.extend(owner_params(request.owner));
        if let Some(keypair) = request.keypair {
            params.push(("keypairs", keypair));
        }
        if let Some(disk) = &disk {
            params.push(("rootdisksize", disk));
        }
        let value = self.job("deployVirtualMachine", &params).await?;
        decode_field("deployVirtualMachine", &value, "virtualmachine")
    }

    /// Attaches an ISO to a VM.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn attach_iso(&self, iso_id: &str, vm_id: &str) -> Result<(), CloudStackError> {
        self.job(
            "attachIso",
            &[
                ("id", iso_id),
                ("virtualmachineid", vm_id),
                ("forced", "true"),
            ],
        )
        .await
        .map(drop)
    }

    /// Detaches a VM's ISO.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn detach_iso(&self, vm_id: &str) -> Result<(), CloudStackError> {
        self.job(
            "detachIso",
            &[("virtualmachineid", vm_id), ("forced", "true")],
        )
        .await
        .map(drop)
    }

    /// Starts a VM.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn start_vm(&self, vm_id: &str) -> Result<(), CloudStackError> {
        self.job("startVirtualMachine", &[("id", vm_id)])
            .await
            .map(drop)
    }

    /// Stops a VM (not forced: the guest shuts down, as CKS stops nodes).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn stop_vm(&self, vm_id: &str) -> Result<(), CloudStackError> {
        self.job("stopVirtualMachine", &[("id", vm_id)])
            .await
            .map(drop)
    }

    /// Destroys and expunges a VM.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn destroy_vm(&self, vm_id: &str) -> Result<(), CloudStackError> {
        self.job(
            "destroyVirtualMachine",
            &[("id", vm_id), ("expunge", "true")],
        )
        .await
        .map(drop)
    }

    /// Moves a running VM to another service offering (`scaleVirtualMachine`: CloudStack
    /// scales it live when dynamic scaling is enabled and the VM and offerings allow it).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn scale_vm(&self, vm_id: &str, offering_id: &str) -> Result<(), CloudStackError> {
        self.job(
            "scaleVirtualMachine",
            &[("id", vm_id), ("serviceofferingid", offering_id)],
        )
        .await
        .map(drop)
    }

    /// Moves a stopped VM to another service offering (`changeServiceForVirtualMachine`).
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn change_vm_offering(
        &self,
        vm_id: &str,
        offering_id: &str,
    ) -> Result<(), CloudStackError> {
        self.client
            .call(
                "changeServiceForVirtualMachine",
                &[("id", vm_id), ("serviceofferingid", offering_id)],
            )
            .await
            .map(drop)
    }

    /// Takes VMs out of a load balancer rule.
    ///
    /// # Errors
    /// CloudStack refused it.
    pub async fn remove_from_lb(
        &self,
        rule_id: &str,
        vm_ids: &[&str],
    ) -> Result<(), CloudStackError> {
        let ids = vm_ids.join(",");
        self.job(
            "removeFromLoadBalancerRule",
            &[("id", rule_id), ("virtualmachineids", &ids)],
        )
        .await
        .map(drop)
    }

    /// The value of a CloudStack global setting (`listConfigurations name=…`).
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn global_setting(&self, name: &str) -> Result<Option<String>, CloudStackError> {
        let items: Vec<Value> = self
            .client
            .list("listConfigurations", &[("name", name)], "configuration")
            .await?;
        Ok(items
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .and_then(|c| c.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string))
    }

    /// The owner's SSH key pair called `name`.
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn keypair(
        &self,
        owner: &Owner,
        name: &str,
    ) -> Result<Option<SshKeyPair>, CloudStackError> {
        let mut params = vec![("name", name)];
        params.extend(owner_params(owner));
        let pairs = self.client.list_all::<SshKeyPair>(&params).await?;
        Ok(pairs.into_iter().find(|k| k.name == name))
    }

    /// VMs as CloudStack renders them (raw JSON, for `virtualmachines` in responses).
    ///
    /// # Errors
    /// CloudStack failed.
    pub async fn vms_json(&self, ids: &[&str]) -> Result<Vec<Value>, CloudStackError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.join(",");
        self.client
            .list(
                "listVirtualMachines",
                &[("ids", &ids), ("listall", "true")],
                "virtualmachine",
            )
            .await
    }
}
