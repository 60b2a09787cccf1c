//! The agent hub against a hostile or unlucky node, over real mTLS on loopback: what a node
//! sends is attacker input (its owner is root on it), enrollment must survive bad CSRs and lost
//! replies, and a node the controller no longer holds is refused.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cks_controller::agents::hub::{ENROLL_ATTEMPTS, MAX_STEPS};
use cks_controller::agents::{
    AgentFuture, AgentHub, EnrollmentSources, MemoryTokens, NodeKey, Roster,
};
use cks_controller::pki::{self, AgentCa, NodeIdentity};
use cks_proto::agent::agent_message::Kind as AgentKind;
use cks_proto::agent::controller_message::Kind as ControllerKind;
use cks_proto::agent::enrollment_client::EnrollmentClient;
use cks_proto::agent::node_session_client::NodeSessionClient;
use cks_proto::agent::{
    AgentMessage, CertificateRenewed, CommandResult, ControllerMessage, EnrollRequest, Hello,
    NodeRole, Progress, RenewCertificate, StepState,
};
use rcgen::{CertificateParams, KeyPair};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Streaming};

const CLUSTER: &str = "c-1";
const WAIT: Duration = Duration::from_secs(30);

/// A roster the test edits: every node but the removed ones.
#[derive(Default)]
struct Removed(Mutex<HashSet<NodeKey>>);

impl Roster for Removed {
    fn admits(&self, node: &NodeKey) -> Result<(), String> {
        if self.0.lock().unwrap().contains(node) {
            Err(format!(
                "node {} is no longer part of its cluster",
                node.node_name
            ))
        } else {
            Ok(())
        }
    }
}

/// Enrollment sources the test sets.
struct FixedSources(Mutex<Vec<std::net::IpAddr>>);

impl EnrollmentSources for FixedSources {
    fn allowed<'a>(
        &'a self,
        _node: &'a NodeKey,
    ) -> AgentFuture<'a, Result<Vec<std::net::IpAddr>, String>> {
        let allowed = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(allowed) })
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    hub: AgentHub,
    ca: Arc<AgentCa>,
    removed: Arc<Removed>,
    addr: SocketAddr,
}

/// A node's key and certificate.
struct NodeCert {
    key: KeyPair,
    cert_pem: String,
}

fn csr(key: &KeyPair) -> String {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

impl Harness {
    async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(AgentCa::load_or_create(&dir.path().join("ca")).unwrap());
        let server = ca.issue_server(&["127.0.0.1".to_string()]).unwrap();
        let removed = Arc::new(Removed::default());
        let hub = AgentHub::new(
            ca.clone(),
            Arc::new(MemoryTokens::default()),
            removed.clone(),
            Duration::from_secs(2),
        );
        let (addr, _task) = hub
            .clone()
            .spawn("127.0.0.1:0".parse().unwrap(), server)
            .await
            .unwrap();
        Harness {
            _dir: dir,
            hub,
            ca,
            removed,
            addr,
        }
    }

    fn token(&self, node: &str) -> String {
        self.hub.issue_token(
            NodeIdentity {
                cluster_id: CLUSTER.into(),
                node_name: node.into(),
                role: NodeRole::Worker,
            },
            Duration::from_secs(600),
        )
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("127.0.0.1")
    }

    async fn channel(&self, tls: ClientTlsConfig) -> Channel {
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn enroll(
        &self,
        token: &str,
        node: &str,
        csr_pem: &str,
    ) -> Result<String, tonic::Status> {
        let channel = self.channel(self.tls()).await;
        EnrollmentClient::new(channel)
            .enroll(EnrollRequest {
                token: token.into(),
                csr_pem: csr_pem.into(),
                node_name: node.into(),
            })
            .await
            .map(|r| r.into_inner().certificate_pem)
    }

    async fn enrolled(&self, node: &str) -> NodeCert {
        let key = KeyPair::generate().unwrap();
        let cert_pem = self
            .enroll(&self.token(node), node, &csr(&key))
            .await
            .unwrap();
        NodeCert { key, cert_pem }
    }

    /// Opens a stream as `node` with `cert`, sends Hello; returns the sender and the inbound
    /// stream, or the refusal.
    async fn open(
        &self,
        node: &str,
        cert: &NodeCert,
    ) -> Result<(mpsc::Sender<AgentMessage>, Streaming<ControllerMessage>), tonic::Status> {
        let tls = self
            .tls()
            .identity(Identity::from_pem(&cert.cert_pem, cert.key.serialize_pem()));
        let channel = self.channel(tls).await;
        let (tx, rx) = mpsc::channel(16);
        tx.send(message(AgentKind::Hello(Hello {
            node_name: node.into(),
            ..Hello::default()
        })))
        .await
        .unwrap();
        let inbound = NodeSessionClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, inbound))
    }

    async fn welcomed(
        &self,
        node: &str,
        cert: &NodeCert,
    ) -> (mpsc::Sender<AgentMessage>, Streaming<ControllerMessage>) {
        let (tx, mut inbound) = self.open(node, cert).await.unwrap();
        let first = next(&mut inbound).await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(ControllerKind::Welcome(_))));
        (tx, inbound)
    }
}

/// Asks for a certificate for `key` over an open stream; returns the controller's answer.
async fn renew(
    tx: &mpsc::Sender<AgentMessage>,
    inbound: &mut Streaming<ControllerMessage>,
    key: &KeyPair,
) -> CertificateRenewed {
    tx.send(message(AgentKind::RenewCertificate(RenewCertificate {
        csr_pem: csr(key),
    })))
    .await
    .unwrap();
    let reply = next(inbound).await.unwrap().unwrap();
    let Some(ControllerKind::CertificateRenewed(renewed)) = reply.kind else {
        panic!("not a renewal answer: {reply:?}");
    };
    renewed
}

fn message(kind: AgentKind) -> AgentMessage {
    AgentMessage { kind: Some(kind) }
}

async fn next(
    inbound: &mut Streaming<ControllerMessage>,
) -> Option<Result<ControllerMessage, tonic::Status>> {
    tokio::time::timeout(WAIT, inbound.next())
        .await
        .expect("the controller answers in time")
}

/// Sends `messages` (in a task of its own) until the controller closes the stream; returns
/// how it closed it.
async fn send_until_closed(
    tx: mpsc::Sender<AgentMessage>,
    inbound: &mut Streaming<ControllerMessage>,
    messages: Vec<AgentMessage>,
) -> tonic::Status {
    let sender = tokio::spawn(async move {
        for message in messages {
            if tx.send(message).await.is_err() {
                break;
            }
        }
    });
    let status = loop {
        match next(inbound).await {
            Some(Err(status)) => break status,
            Some(Ok(_)) => continue,
            None => panic!("the stream ended without an error status"),
        }
    };
    sender.abort();
    status
}

use tokio_stream::StreamExt as _;

#[tokio::test]
async fn a_bad_csr_does_not_spend_the_token_and_a_lost_reply_is_answered_again() {
    let h = Harness::start().await;
    let token = h.token("n1");
    let err = h.enroll(&token, "n1", "not a CSR").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // The token survived the bad CSR.
    let key = KeyPair::generate().unwrap();
    let first = h.enroll(&token, "n1", &csr(&key)).await.unwrap();
    // The reply was lost: the agent retries with the same key and is answered again.
    let again = h.enroll(&token, "n1", &csr(&key)).await.unwrap();
    for pem in [&first, &again] {
        let der = pki::pem_to_der(pem).unwrap();
        assert_eq!(pki::node_identity(&der).unwrap().node_name, "n1");
    }
    // Any other key is refused: the token is spent.
    let other = KeyPair::generate().unwrap();
    let err = h.enroll(&token, "n1", &csr(&other)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // A token shown by the wrong node does not spend it either.
    let token = h.token("n2");
    let err = h.enroll(&token, "n3", &csr(&other)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    h.enroll(&token, "n2", &csr(&other)).await.unwrap();
}

#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_source() {
    let h = Harness::start().await;
    let channel = h.channel(h.tls()).await;
    let mut client = EnrollmentClient::new(channel);
    let mut codes = Vec::new();
    for _ in 0..=ENROLL_ATTEMPTS {
        let err = client
            .enroll(EnrollRequest {
                token: "guess".into(),
                csr_pem: "x".into(),
                node_name: "n1".into(),
            })
            .await
            .unwrap_err();
        codes.push(err.code());
    }
    let limit = usize::try_from(ENROLL_ATTEMPTS).unwrap();
    assert!(
        codes[..limit].iter().all(|c| *c == Code::InvalidArgument),
        "{codes:?}"
    );
    assert_eq!(codes[limit], Code::ResourceExhausted);
    // Even a good attempt waits for the window now.
    let key = KeyPair::generate().unwrap();
    let err = h
        .enroll(&h.token("n1"), "n1", &csr(&key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn a_removed_node_is_cut_and_refused_at_stream_enrollment_and_renewal() {
    let h = Harness::start().await;
    let cert = h.enrolled("n1").await;
    let (_tx, mut inbound) = h.welcomed("n1", &cert).await;
    let key = NodeKey::new(CLUSTER, "n1");
    // A token issued before the removal is refused after it.
    let token = h.token("n1");
    h.removed.0.lock().unwrap().insert(key.clone());
    h.hub.forget_node(&key);
    // Its open stream is cut at once, not at its next message.
    let status = loop {
        match next(&mut inbound).await {
            Some(Err(status)) => break status,
            Some(Ok(_)) => {}
            None => panic!("stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    // Its certificate is refused from now on.
    let err = h.open("n1", &cert).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(!h.hub.status(&key).connected);
    let other = KeyPair::generate().unwrap();
    let err = h.enroll(&token, "n1", &csr(&other)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A node removed while connected cannot renew either.
    let cert = h.enrolled("n2").await;
    let (tx, mut inbound) = h.welcomed("n2", &cert).await;
    h.removed
        .0
        .lock()
        .unwrap()
        .insert(NodeKey::new(CLUSTER, "n2"));
    let new_key = KeyPair::generate().unwrap();
    let renewed = renew(&tx, &mut inbound, &new_key).await;
    assert!(renewed.certificate_pem.is_empty());
    assert!(
        renewed.error.contains("no longer part"),
        "{}",
        renewed.error
    );
}

#[tokio::test]
async fn a_certificate_renewed_over_the_stream_opens_the_next_stream() {
    let h = Harness::start().await;
    let old = h.enrolled("n1").await;
    let (tx, mut inbound) = h.welcomed("n1", &old).await;
    let key = NodeKey::new(CLUSTER, "n1");
    let old_fingerprint = pki::fingerprint(&pki::pem_to_der(&old.cert_pem).unwrap());
    assert_eq!(
        h.hub.status(&key).certificate,
        Some(old_fingerprint.clone())
    );
    let new_key = KeyPair::generate().unwrap();
    let renewed = renew(&tx, &mut inbound, &new_key).await;
    assert!(renewed.error.is_empty(), "{}", renewed.error);
    let der = pki::pem_to_der(&renewed.certificate_pem).unwrap();
    assert_eq!(pki::node_identity(&der).unwrap().node_name, "n1");
    let new = NodeCert {
        key: new_key,
        cert_pem: renewed.certificate_pem,
    };
    drop((tx, inbound));
    h.welcomed("n1", &new).await;
    let status = h.hub.status(&key);
    assert_eq!(status.certificate, Some(pki::fingerprint(&der)));
    assert_ne!(status.certificate, Some(old_fingerprint));
    assert_eq!(status.renewals, 1);
}

#[tokio::test]
async fn a_node_sending_endless_step_names_is_cut_and_the_hub_stays_bounded() {
    let h = Harness::start().await;
    let cert = h.enrolled("n1").await;
    let (tx, mut inbound) = h.welcomed("n1", &cert).await;
    let steps = (0..10 * MAX_STEPS)
        .map(|i| {
            message(AgentKind::Progress(Progress {
                step: Some(StepState {
                    step: format!("step-{i}"),
                    detail: "x".repeat(10_000),
                    ..StepState::default()
                }),
                fraction: -1.0,
                bundle: None,
            }))
        })
        .collect();
    let status = send_until_closed(tx, &mut inbound, steps).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let footprint = h.hub.footprint();
    assert_eq!(footprint.nodes, 1);
    assert!(footprint.max_steps <= MAX_STEPS, "{footprint:?}");
    let hello = h.hub.status(&NodeKey::new(CLUSTER, "n1")).hello.unwrap();
    assert!(hello.steps.iter().all(|s| s.detail.len() <= 4096));
}

#[tokio::test]
async fn a_node_sending_endless_result_ids_is_cut_and_none_is_kept() {
    let h = Harness::start().await;
    let cert = h.enrolled("n1").await;
    let (tx, mut inbound) = h.welcomed("n1", &cert).await;
    let results = (0..5000)
        .map(|i| {
            message(AgentKind::Result(CommandResult {
                command_id: format!("made-up-{i}"),
                ok: true,
                ..CommandResult::default()
            }))
        })
        .collect();
    let status = send_until_closed(tx, &mut inbound, results).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    let footprint = h.hub.footprint();
    assert_eq!(footprint.max_finished_ids, 0, "{footprint:?}");
    assert_eq!(footprint.max_outstanding, 0, "{footprint:?}");
}

#[tokio::test]
async fn a_second_stream_of_a_node_replaces_the_first() {
    let h = Harness::start().await;
    let cert = h.enrolled("n1").await;
    let (_tx1, mut first) = h.welcomed("n1", &cert).await;
    let (_tx2, _second) = h.welcomed("n1", &cert).await;
    let status = loop {
        match next(&mut first).await {
            Some(Err(status)) => break status,
            Some(Ok(_)) => {}
            None => panic!("the replaced stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Aborted, "{status}");
    let status = h.hub.status(&NodeKey::new(CLUSTER, "n1"));
    assert!(status.connected);
    assert_eq!(status.sessions, 2);
}

#[tokio::test]
async fn an_enrollment_from_elsewhere_than_the_vm_is_refused_and_spends_nothing() {
    let h = Harness::start().await;
    // CloudStack says the node's traffic comes from its network's source NAT address.
    let sources = Arc::new(FixedSources(Mutex::new(vec![
        "192.0.2.10".parse().unwrap(),
    ])));
    h.hub.check_enrollment_sources(sources.clone());
    let token = h.token("n1");
    let key = KeyPair::generate().unwrap();
    let err = h.enroll(&token, "n1", &csr(&key)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // From the right address (here: loopback, where the test runs) the same token works.
    *sources.0.lock().unwrap() = vec!["127.0.0.1".parse().unwrap()];
    h.enroll(&token, "n1", &csr(&key)).await.unwrap();
}
