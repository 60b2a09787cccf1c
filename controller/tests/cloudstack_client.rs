//! The CloudStack client against the real simulator (`cloudsim` on 127.0.0.1:0): signing,
//! pagination, async jobs, errors, retries, identity resolution and the drop-in proxy.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use cks_controller::cloudstack::client::{RateLimit, RetryPolicy, decode_field};
use cks_controller::cloudstack::types::{
    Account, AsyncJobResult, Configuration, FirewallRule, GuestIpType, Iso, JobStatus,
    LoadBalancerRule, Network, NetworkOffering, PortForwardingRule, PublicIpAddress,
    ServiceOffering, Tag, Template, User, VirtualMachine, VmState, Zone,
};
use cks_controller::cloudstack::{
    ClientConfig, CloudStackClient, CloudStackError, IdentityError, IdentityResolver, RoleType,
    sign,
};
use cloudsim::faults::FaultConfig;
use cloudsim::{Keys, SimConfig, SimHandle, Simulator};
use reqwest::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::time::Instant;

const JOB_DEADLINE: Duration = Duration::from_secs(10);

async fn start() -> SimHandle {
    start_with(SimConfig::for_tests()).await
}

async fn start_with(config: SimConfig) -> SimHandle {
    Simulator::start(config).await.expect("start simulator")
}

/// A test configuration: fast polling and retries, deterministic jitter, no rate limit.
fn config(sim: &SimHandle, keys: &Keys) -> ClientConfig {
    let mut config = ClientConfig::new(sim.endpoint(), &keys.api_key, keys.secret_key.as_str());
    config.rate_limit = None;
    config.jitter_seed = Some(1);
    config.job_poll.initial_interval = Duration::from_millis(5);
    config.job_poll.max_interval = Duration::from_millis(50);
    config.read_retry = RetryPolicy {
        max_attempts: 6,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
    };
    config
}

fn client(sim: &SimHandle, keys: &Keys) -> CloudStackClient {
    CloudStackClient::new(config(sim, keys)).expect("client")
}

fn faults(config: Value) -> FaultConfig {
    serde_json::from_value(config).expect("fault config")
}

fn deadline() -> Instant {
    Instant::now() + JOB_DEADLINE
}

/// Zone, 2-vCPU offering and template of the seeded simulator.
async fn seeded_ids(cs: &CloudStackClient) -> (String, String, String) {
    let zones: Vec<Zone> = cs.list_all(&[]).await.expect("zones");
    let offerings: Vec<ServiceOffering> = cs
        .list_all(&[("name", "Medium Instance")])
        .await
        .expect("offerings");
    let templates: Vec<Template> = cs
        .list_all(&[("templatefilter", "executable")])
        .await
        .expect("templates");
    (
        zones[0].id.clone(),
        offerings[0].id.clone(),
        templates[0].id.clone(),
    )
}

async fn create_network(cs: &CloudStackClient, zone: &str, name: &str) -> Network {
    let offerings: Vec<NetworkOffering> = cs
        .list_all(&[("name", "DefaultNetworkOfferingforKubernetesService")])
        .await
        .expect("network offerings");
    cs.call_as(
        "createNetwork",
        &[
            ("name", name),
            ("networkofferingid", &offerings[0].id),
            ("zoneid", zone),
        ],
        "network",
    )
    .await
    .expect("createNetwork")
}

fn count_faults(sim: &SimHandle, command: &str, fault: &str) -> usize {
    sim.fault_log()
        .iter()
        .filter(|e| e.command.eq_ignore_ascii_case(command) && e.fault == fault)
        .count()
}

#[tokio::test]
async fn lists_read_every_page_and_empty_lists_are_empty() {
    let sim = start().await;
    let mut paged = config(&sim, sim.admin_keys());
    paged.page_size = 1;
    let one_per_page = CloudStackClient::new(paged).unwrap();
    let offerings: Vec<ServiceOffering> = one_per_page.list_all(&[]).await.unwrap();
    let mut names: Vec<&str> = offerings.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["Large Instance", "Medium Instance", "Small Instance"]
    );
    assert!(
        offerings
            .iter()
            .all(|o| !o.iscustomized && o.cpunumber.is_some())
    );

    let mut paged = config(&sim, sim.admin_keys());
    paged.page_size = 2;
    let two_per_page = CloudStackClient::new(paged).unwrap();
    let again: Vec<ServiceOffering> = two_per_page
        .list("listServiceOfferings", &[("page", "7")], "serviceoffering")
        .await
        .unwrap();
    assert_eq!(
        again, offerings,
        "caller's page is replaced, order is stable"
    );

    let cs = client(&sim, sim.admin_keys());
    let zones: Vec<Zone> = cs.list_all(&[]).await.unwrap();
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0].name, "zone1");
    // Nothing matches: CloudStack answers `{}`.
    let none: Vec<ServiceOffering> = cs.list_all(&[("name", "no such offering")]).await.unwrap();
    assert!(none.is_empty());
    let vms: Vec<VirtualMachine> = cs.list_all(&[]).await.unwrap();
    assert!(vms.is_empty());
}

#[tokio::test]
async fn deploys_a_vm_with_posted_userdata_and_polls_the_job_to_completion() {
    let sim = start().await;
    let cs = client(&sim, sim.user_keys());
    let (zone, offering, template) = seeded_ids(&cs).await;
    let network = create_network(&cs, &zone, "c1-network").await;
    assert_eq!(network.network_type, GuestIpType::Isolated);
    // More than 4 KB of base64: the simulator, like CloudStack, refuses it over GET.
    let userdata = STANDARD.encode(vec![b'x'; 6000]);
    let job = cs
        .submit(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &network.id),
                ("name", "c1-control-1"),
                ("userdata", &userdata),
            ],
        )
        .await
        .expect("deploy submitted");
    let vm_id = job
        .id
        .clone()
        .expect("create-style command returns the VM id");
    let result = cs.wait_job(&job.job_id, deadline()).await.expect("job");
    let vm: VirtualMachine =
        decode_field("deployVirtualMachine", &result, "virtualmachine").unwrap();
    assert_eq!(vm.id, vm_id);
    assert_eq!(vm.state, VmState::Running);
    assert_eq!(
        vm.default_nic().and_then(|n| n.networkid.as_deref()),
        Some(network.id.as_str())
    );
    assert!(vm.ip_address().is_some());

    // Map parameters are signed like any other.
    cs.call_async(
        "createTags",
        &[
            ("resourceids", &vm_id),
            ("resourcetype", "UserVm"),
            ("tags[0].key", "cks-cluster"),
            ("tags[0].value", "c1 ~*+&="),
        ],
        deadline(),
    )
    .await
    .expect("createTags");
    let listed: Vec<VirtualMachine> = cs.list_all(&[("id", &vm_id)]).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].tag("cks-cluster"), Some("c1 ~*+&="));
    let stored = sim.snapshot();
    let stored_vm = stored.vms.iter().find(|v| v.id == vm_id).unwrap();
    assert_eq!(stored_vm.userdata.as_deref(), Some(userdata.as_str()));
}

#[tokio::test]
async fn a_failed_job_is_a_job_error_with_its_code() {
    let sim = start().await;
    let cs = client(&sim, sim.user_keys());
    let (zone, offering, template) = seeded_ids(&cs).await;
    let network = create_network(&cs, &zone, "c2-network").await;
    sim.set_faults(faults(json!({
        "seed": 3,
        "rules": [{"command": "deployVirtualMachine", "job_failure_rate": 1.0}]
    })));
    let err = cs
        .call_async(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &network.id),
            ],
            deadline(),
        )
        .await
        .unwrap_err();
    match &err {
        CloudStackError::Job {
            errorcode,
            errortext,
            ..
        } => {
            assert_eq!(*errorcode, 530);
            assert!(errortext.contains("injected fault"), "{errortext}");
        }
        other => panic!("expected a job error, got {other:?}"),
    }
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_job_still_running_at_the_deadline_can_be_awaited_again() {
    let mut config = SimConfig::for_tests();
    config.job_duration = Duration::from_millis(1500);
    let sim = start_with(config).await;
    let cs = client(&sim, sim.user_keys());
    let (zone, offering, template) = seeded_ids(&cs).await;
    let network = create_network(&cs, &zone, "c3-network").await;
    let job = cs
        .submit(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &network.id),
            ],
        )
        .await
        .unwrap();
    let err = cs
        .wait_job(&job.job_id, Instant::now() + Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudStackError::JobTimeout { ref job_id } if *job_id == job.job_id));
    let result = cs.wait_job(&job.job_id, deadline()).await.unwrap();
    assert_eq!(result["virtualmachine"]["state"], "Running");
}

#[tokio::test]
async fn api_errors_carry_cloudstack_codes() {
    let sim = start().await;
    let keys = sim.admin_keys();
    let mut bad = config(&sim, keys);
    bad.secret_key = "wrong-secret-value".into();
    let bad = CloudStackClient::new(bad).unwrap();
    let err = bad.call("listZones", &[]).await.unwrap_err();
    match &err {
        CloudStackError::Api {
            command,
            errorcode,
            errortext,
            ..
        } => {
            assert_eq!((command.as_str(), *errorcode), ("listZones", 401));
            assert_eq!(
                errortext,
                "unable to verify user credentials and/or request signature"
            );
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("wrong-secret-value") && !shown.contains(&keys.secret_key));

    let cs = client(&sim, sim.user_keys());
    let err = cs.call("frobnicate", &[]).await.unwrap_err();
    assert_eq!(err.errorcode(), Some(432));
    let err = cs.call("listTemplates", &[]).await.unwrap_err();
    assert!(
        matches!(&err, CloudStackError::Api { errorcode: 431, cserrorcode: Some(4350), errortext, .. }
            if errortext.contains("templatefilter")),
        "{err:?}"
    );
}

#[tokio::test]
async fn identity_resolution_of_admin_and_user_keys() {
    let sim = start().await;
    let resolver = IdentityResolver::new(client(&sim, sim.admin_keys()));

    let admin = resolver.resolve(&sim.admin_keys().api_key).await.unwrap();
    assert_eq!(admin.role_type, RoleType::Admin);
    assert!(admin.is_admin());
    assert_eq!(admin.user_id, sim.admin_keys().user_id);
    assert_eq!(
        admin.secret_key.expose_secret(),
        sim.admin_keys().secret_key
    );

    let user = resolver.resolve(&sim.user_keys().api_key).await.unwrap();
    assert_eq!(user.role_type, RoleType::User);
    assert_eq!(user.username, "user");
    assert_eq!(user.account, "user");
    assert_eq!(user.user_id, sim.user_keys().user_id);
    assert!(!user.account_id.is_empty() && !user.domain_id.is_empty());
    assert!(!format!("{user:?}").contains(&sim.user_keys().secret_key));

    // The resolved secret verifies what that user signs.
    let mut params: Vec<(String, String)> = vec![
        ("command".into(), "listKubernetesClusters".into()),
        ("apiKey".into(), user.api_key.clone()),
        ("response".into(), "json".into()),
    ];
    let signature = sign::sign(&params, &sim.user_keys().secret_key);
    params.push(("signature".into(), signature));
    assert_eq!(
        sign::verify(
            &params,
            user.secret_key.expose_secret(),
            OffsetDateTime::now_utc()
        ),
        Ok(())
    );

    assert!(matches!(
        resolver.resolve("no-such-key").await,
        Err(IdentityError::UnknownApiKey)
    ));
    assert!(matches!(
        resolver.resolve("").await,
        Err(IdentityError::UnknownApiKey)
    ));

    // getUser is for admins: a resolver with user keys cannot resolve anyone.
    let not_admin = IdentityResolver::new(client(&sim, sim.user_keys()));
    match not_admin.resolve(&sim.user_keys().api_key).await {
        Err(IdentityError::Lookup(err)) => assert_eq!(err.errorcode(), Some(432)),
        other => panic!("expected a lookup failure, got {other:?}"),
    }
}

#[tokio::test]
async fn identity_lookups_are_shared_cached_and_expire() {
    let sim = start().await;
    // A 1 ms latency rule on both admin commands logs one fault event per request: a counter.
    sim.set_faults(faults(json!({
        "rules": [
            {"command": "getUser", "latency_ms": 1},
            {"command": "getUserKeys", "latency_ms": 1}
        ]
    })));
    let resolver = std::sync::Arc::new(IdentityResolver::with_ttl(
        client(&sim, sim.admin_keys()),
        Duration::from_millis(300),
        Duration::from_millis(300),
    ));
    let key = sim.user_keys().api_key.clone();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let resolver = resolver.clone();
            let key = key.clone();
            tokio::spawn(async move { resolver.resolve(&key).await.map(|c| c.user_id) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), sim.user_keys().user_id);
    }
    assert_eq!(count_faults(&sim, "getUser", "latency"), 1);
    assert_eq!(count_faults(&sim, "getUserKeys", "latency"), 1);

    // Unknown keys are cached negatively.
    for _ in 0..3 {
        assert!(resolver.resolve("unknown-key").await.is_err());
    }
    assert_eq!(count_faults(&sim, "getUser", "latency"), 2);

    // After the TTL, or after invalidation, CloudStack is asked again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    resolver.resolve(&key).await.unwrap();
    assert_eq!(count_faults(&sim, "getUser", "latency"), 3);
    resolver.invalidate(&key);
    resolver.resolve(&key).await.unwrap();
    assert_eq!(count_faults(&sim, "getUser", "latency"), 4);
    assert_eq!(count_faults(&sim, "getUserKeys", "latency"), 3);
}

/// Signs `args` for `command` by hand (camelCase names, as `cs` sends them) and form-encodes.
fn hand_signed(command: &str, args: &[(&str, &str)], keys: &Keys) -> String {
    let expires = sign::format_expires(OffsetDateTime::now_utc() + Duration::from_secs(300));
    let mut params: Vec<(&str, &str)> = args.to_vec();
    params.extend([
        ("command", command),
        ("apiKey", keys.api_key.as_str()),
        ("response", "json"),
        ("signatureVersion", "3"),
        ("expires", expires.as_str()),
    ]);
    let signature = sign::sign(&params, &keys.secret_key);
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .append_pair("signature", &signature)
        .finish()
}

#[tokio::test]
async fn forward_passes_signed_requests_and_answers_through_unchanged() {
    let sim = start().await;
    // The proxy's own keys (admin) play no part: the caller's signature is forwarded.
    let proxy = client(&sim, sim.admin_keys());
    let user = sim.user_keys();

    let query = hand_signed("listZones", &[("name", "zone1")], user);
    let answer = proxy
        .forward(Method::GET, Some(&query), Bytes::new(), None)
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        answer.content_type
    );
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["listzonesresponse"]["zone"][0]["name"], "zone1");

    // A form POST, as `cs` sends with CLOUDSTACK_METHOD=post.
    let form = hand_signed("listServiceOfferings", &[("name", "Small Instance")], user);
    let answer = proxy
        .forward(
            Method::POST,
            None,
            Bytes::from(form),
            Some("application/x-www-form-urlencoded"),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body["listserviceofferingsresponse"]["serviceoffering"][0]["name"],
        "Small Instance"
    );

    // CloudStack's refusal is the caller's answer, not a proxy error.
    let tampered = hand_signed("listZones", &[("name", "zone1")], user).replace("zone1", "zone2");
    let answer = proxy
        .forward(Method::GET, Some(&tampered), Bytes::new(), None)
        .await
        .unwrap();
    assert_eq!(answer.status, 401);
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["listzonesresponse"]["errorcode"], 401);
}

#[tokio::test]
async fn read_only_commands_are_retried_through_injected_503s() {
    let sim = start().await;
    let cs = client(&sim, sim.admin_keys());
    sim.set_faults(faults(json!({
        "seed": 42,
        "rules": [{"command": "listZones", "error_rate": 0.4, "error_code": 503}]
    })));
    for _ in 0..12 {
        let zones: Vec<Zone> = cs.list_all(&[]).await.expect("retried to success");
        assert_eq!(zones.len(), 1);
    }
    let injected = count_faults(&sim, "listZones", "error");
    assert!(
        injected >= 2,
        "only {injected} errors injected; pick another seed"
    );

    // With retries exhausted the transient error surfaces.
    sim.set_faults(faults(json!({
        "rules": [{"command": "listZones", "error_rate": 1.0, "error_code": 503}]
    })));
    let err = cs.call("listZones", &[]).await.unwrap_err();
    assert_eq!(err.errorcode(), Some(503));
    assert!(err.is_transient());
    assert_eq!(
        count_faults(&sim, "listZones", "error"),
        6,
        "max_attempts requests"
    );
}

#[tokio::test]
async fn mutating_commands_are_sent_once_even_when_the_answer_is_lost() {
    let sim = start().await;
    let cs = client(&sim, sim.user_keys());
    let (zone, ..) = seeded_ids(&cs).await;
    let offerings: Vec<NetworkOffering> = cs
        .list_all(&[("name", "DefaultNetworkOfferingforKubernetesService")])
        .await
        .unwrap();
    sim.set_faults(faults(json!({
        "rules": [{"command": "createNetwork", "lost_response_rate": 1.0}]
    })));
    let err = cs
        .call(
            "createNetwork",
            &[
                ("name", "lost-network"),
                ("networkofferingid", &offerings[0].id),
                ("zoneid", &zone),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, CloudStackError::Http { .. }), "{err:?}");
    assert!(err.is_transient(), "the connection broke");
    assert_eq!(
        count_faults(&sim, "createNetwork", "lost_response"),
        1,
        "not retried"
    );
    // The network exists: the workflow engine finds it by name instead of creating another.
    sim.set_faults(FaultConfig::default());
    let networks: Vec<Network> = cs.list_all(&[("keyword", "lost-network")]).await.unwrap();
    assert_eq!(networks.len(), 1);
    assert_eq!(networks[0].name, "lost-network");
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout_and_reads_retry_it() {
    let sim = start().await;
    let mut slow = config(&sim, sim.admin_keys());
    slow.request_timeout = Duration::from_millis(100);
    slow.read_retry.max_attempts = 2;
    let cs = CloudStackClient::new(slow).unwrap();
    sim.set_faults(faults(json!({
        "rules": [{"command": "listZones", "latency_ms": 400}]
    })));
    let err = cs.call("listZones", &[]).await.unwrap_err();
    assert!(matches!(err, CloudStackError::Timeout { .. }), "{err:?}");
    assert_eq!(count_faults(&sim, "listZones", "latency"), 2);
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let sim = start().await;
    let mut limited = config(&sim, sim.admin_keys());
    limited.rate_limit = Some(RateLimit {
        per_second: 20.0,
        burst: 1,
    });
    let cs = CloudStackClient::new(limited).unwrap();
    let started = Instant::now();
    for _ in 0..5 {
        cs.call("listZones", &[]).await.unwrap();
    }
    // The first goes at once, the next four 50 ms apart.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn typed_lists_decode_the_simulators_objects() {
    let sim = start().await;
    let cs = client(&sim, sim.user_keys());
    let (zone, offering, template) = seeded_ids(&cs).await;
    let network = create_network(&cs, &zone, "c4-network").await;
    let deployed = cs
        .call_async(
            "deployVirtualMachine",
            &[
                ("zoneid", &zone),
                ("serviceofferingid", &offering),
                ("templateid", &template),
                ("networkids", &network.id),
                ("name", "c4-control-1"),
            ],
            deadline(),
        )
        .await
        .unwrap();
    let vm: VirtualMachine =
        decode_field("deployVirtualMachine", &deployed, "virtualmachine").unwrap();

    let ips: Vec<PublicIpAddress> = cs
        .list_all(&[
            ("associatednetworkid", &network.id),
            ("issourcenat", "true"),
        ])
        .await
        .unwrap();
    assert_eq!(ips.len(), 1);
    let ip = &ips[0];
    assert!(ip.issourcenat);
    assert_eq!(ip.associatednetworkid.as_deref(), Some(network.id.as_str()));

    let fw = cs
        .call_async(
            "createFirewallRule",
            &[
                ("ipaddressid", &ip.id),
                ("protocol", "tcp"),
                ("startport", "6443"),
                ("endport", "6443"),
                ("cidrlist", "0.0.0.0/0"),
            ],
            deadline(),
        )
        .await
        .unwrap();
    let fw: FirewallRule = decode_field("createFirewallRule", &fw, "firewallrule").unwrap();
    cs.call_async(
        "createPortForwardingRule",
        &[
            ("ipaddressid", &ip.id),
            ("protocol", "tcp"),
            ("publicport", "2222"),
            ("privateport", "22"),
            ("virtualmachineid", &vm.id),
            ("openfirewall", "false"),
        ],
        deadline(),
    )
    .await
    .unwrap();
    cs.call_async(
        "createLoadBalancerRule",
        &[
            ("name", "api-lb"),
            ("publicipid", &ip.id),
            ("publicport", "6443"),
            ("privateport", "6443"),
            ("algorithm", "roundrobin"),
            ("networkid", &network.id),
            ("openfirewall", "false"),
        ],
        deadline(),
    )
    .await
    .unwrap();

    let firewall: Vec<FirewallRule> = cs.list_all(&[("ipaddressid", &ip.id)]).await.unwrap();
    assert_eq!(firewall, vec![fw.clone()]);
    assert_eq!((fw.startport, fw.endport), (Some(6443), Some(6443)));
    let forwards: Vec<PortForwardingRule> = cs.list_all(&[("ipaddressid", &ip.id)]).await.unwrap();
    assert_eq!(forwards.len(), 1);
    assert_eq!(
        (forwards[0].publicport, forwards[0].privateport),
        (Some(2222), Some(22))
    );
    assert_eq!(
        forwards[0].virtualmachineid.as_deref(),
        Some(vm.id.as_str())
    );
    let balancers: Vec<LoadBalancerRule> = cs.list_all(&[("publicipid", &ip.id)]).await.unwrap();
    assert_eq!(balancers.len(), 1);
    assert_eq!(balancers[0].name.as_deref(), Some("api-lb"));
    assert_eq!(balancers[0].publicport, Some(6443));

    cs.call_async(
        "createTags",
        &[
            ("resourceids", &vm.id),
            ("resourcetype", "UserVm"),
            ("tags[0].key", "cks-cluster"),
            ("tags[0].value", "c4"),
        ],
        deadline(),
    )
    .await
    .unwrap();
    let tags: Vec<Tag> = cs.list_all(&[("resourceid", &vm.id)]).await.unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!(
        (tags[0].key.as_str(), tags[0].value.as_str()),
        ("cks-cluster", "c4")
    );
    assert_eq!(tags[0].resourceid.as_deref(), Some(vm.id.as_str()));

    let offerings: Vec<NetworkOffering> = cs
        .list_all(&[("name", "DefaultNetworkOfferingforKubernetesService")])
        .await
        .unwrap();
    assert!(offerings[0].has_service("SourceNat") && offerings[0].has_service("Lb"));

    let jobs: Vec<AsyncJobResult> = cs.list_all(&[]).await.unwrap();
    assert!(
        jobs.iter().all(|j| j.status() == JobStatus::Succeeded),
        "{jobs:?}"
    );
    assert!(jobs.len() >= 5);

    let accounts: Vec<Account> = cs.list_all(&[]).await.unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].user[0].id, sim.user_keys().user_id);
    let users: Vec<User> = cs.list_all(&[]).await.unwrap();
    assert_eq!(users[0].roletype.as_deref(), Some("User"));

    let admin = client(&sim, sim.admin_keys());
    let settings: Vec<Configuration> = admin
        .list_all(&[("name", "default.page.size")])
        .await
        .unwrap();
    assert_eq!(settings[0].value.as_deref(), Some("500"));
    let registered: Value = admin
        .call(
            "registerIso",
            &[
                ("name", "v1.33.1-Kubernetes-Binaries-ISO"),
                ("url", "file:///nonexistent/cks.iso"),
                ("zoneid", &zone),
                ("ispublic", "true"),
                ("bootable", "false"),
            ],
        )
        .await
        .unwrap();
    let iso_id = registered["iso"][0]["id"].as_str().unwrap().to_owned();
    let isos: Vec<Iso> = admin
        .list_all(&[("isofilter", "self"), ("id", &iso_id)])
        .await
        .unwrap();
    assert_eq!(isos.len(), 1);
    assert!(!isos[0].bootable);
    assert_eq!(isos[0].zoneid.as_deref(), Some(zone.as_str()));
}
