//! Wiring for `cks-controller serve`: the store, the sealing key and the agent CA in the data
//! directory, the CloudStack client, the agent endpoint, the workflow engine (resuming what was
//! running), and the API. Listeners bind only after the configuration and the data directory
//! proved usable.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::AgentHub;
use crate::agents::StoreRoster;
use crate::agents::hub::DEFAULT_HEARTBEAT;
use crate::agents::tokens::StoreTokens;
use crate::api::Api;
use crate::cloud::Cloud;
use crate::cloudstack::{ClientConfig, CloudStackClient, IdentityResolver};
use crate::config::Config;
use crate::context::{Context, NodeDefaults};
use crate::jobs::Jobs;
use crate::listen::{CertReloader, reload_on_sighup};
use crate::pki::AgentCa;
use crate::seal::Sealer;
use crate::settings::Settings;
use crate::store::{SqliteStore, Store};
use crate::workflow::Engine;

/// The controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory is unusable.
    #[error("cannot use the data directory {0}")]
    DataDir(String, #[source] std::io::Error),
    /// Another controller holds the data directory, or it cannot be locked.
    #[error(transparent)]
    Locked(#[from] crate::reseal::ResealError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The sealing key could not be loaded.
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// The agent CA could not be loaded or created.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The CloudStack client could not be built.
    #[error(transparent)]
    CloudStack(#[from] crate::cloudstack::CloudStackError),
    /// The API's certificate or key could not be loaded.
    #[error("cannot use the API's TLS certificate")]
    Tls(#[from] crate::listen::TlsError),
    /// Plain HTTP was asked for off loopback without the setting that allows it.
    #[error(
        "refusing plain HTTP on {0}: set api.tls_cert_file and api.tls_key_file, or \
         api.allow_plain_http = true"
    )]
    PlainHttp(SocketAddr),
    /// A listener could not be bound.
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// A running controller.
pub struct Running {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the agent endpoint listens.
    pub agents_addr: SocketAddr,
    /// Shared state (tests look inside).
    pub ctx: Context,
    engine: Engine,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Held until the controller is dropped: no second controller (or key rotation) on the
    /// same data directory meanwhile.
    _lock: crate::reseal::DataDirLock,
}

impl Running {
    /// Stops accepting requests, lets workflows reach a step boundary, and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.engine.wait().await;
        for task in self.tasks {
            let _ = task.await;
        }
        info!("controller stopped");
    }

    /// The token that stops everything.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the controller.
///
/// # Errors
/// [`StartError`] when the data directory, the store, the keys or a listener is unusable.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    if let Some(ledger) = &config.crash_ledger {
        warn!(ledger = %ledger.display(), "crash points armed: this controller kills itself at each new one (tests only)");
        crate::crashpoint::arm(ledger.clone());
    }
    let data = &config.data_dir;
    crate::pki::create_private_dir(data)
        .map_err(|e| StartError::DataDir(data.display().to_string(), e))?;
    let lock = crate::reseal::DataDirLock::acquire(data)?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&data.join("state.db"))?);
    let sealer = Arc::new(Sealer::load_or_create(&data.join("secrets.key"))?);
    let ca = Arc::new(AgentCa::load_or_create(&data.join("pki"))?);

    if config.api_tls.is_none() && !config.api_plain_http_allowed() {
        return Err(StartError::PlainHttp(config.api_listen));
    }
    // The certificate is loaded before anything binds: a bad file stops the start.
    let api_certs = match &config.api_tls {
        Some(files) => Some(CertReloader::load(files.clone())?),
        None => None,
    };

    let client = CloudStackClient::new(ClientConfig::new(
        config.endpoint.clone(),
        config.api_key.clone(),
        config.secret_key.clone(),
    ))?;
    // Identity look-ups (driven by whoever sends requests) have a budget of their own, so a
    // flood of unknown keys cannot delay the workflows' CloudStack calls.
    let identity = Arc::new(IdentityResolver::new(client.with_rate_limit(Some(
        crate::cloudstack::client::RateLimit {
            per_second: 10.0,
            burst: 20,
        },
    ))));
    let forwarder = client.with_rate_limit(None);

    let agents_listener = TcpListener::bind(config.agents_listen)
        .await
        .map_err(|e| StartError::Bind(config.agents_listen, e))?;
    let agents_addr = agents_listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.agents_listen, e))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .map_err(|e| StartError::Bind(config.api_listen, e))?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.api_listen, e))?;

    // An advertised address on port 0 (tests) means the port just bound.
    let advertise: Vec<String> = config
        .agents_advertise
        .iter()
        .map(|a| match a.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                SocketAddr::new(addr.ip(), agents_addr.port()).to_string()
            }
            _ => a.clone(),
        })
        .collect();
    let hosts: Vec<String> = advertise
        .iter()
        .map(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => addr.ip().to_string(),
            Err(_) => a.rsplit_once(':').map_or(a.clone(), |(h, _)| h.to_string()),
        })
        .collect();
    let server_cert = ca.issue_server(&hosts)?;
    let hub = AgentHub::new(
        ca.clone(),
        Arc::new(StoreTokens::new(store.clone())),
        Arc::new(StoreRoster::new(store.clone())),
        DEFAULT_HEARTBEAT,
    );
    if config.agents_check_source {
        // A token is only good from where its VM can be, as CloudStack reports it.
        hub.check_enrollment_sources(Arc::new(crate::agents::sources::CloudSources::new(
            store.clone(),
            Cloud::new(client.clone()),
        )));
    } else {
        warn!("enrollment source check off: a node's token is accepted from any address");
    }

    let ctx = Context {
        store: store.clone(),
        settings: Settings::new(store.clone()),
        cloud: Cloud::new(client),
        agents: Arc::new(hub.clone()),
        sealer,
        jobs: Jobs::new(store),
        nodes: NodeDefaults {
            agent_addresses: advertise.clone(),
            template: config.node_template.clone(),
            enrollment_ttl: config.enrollment_ttl,
            pod_cidr: config.pod_cidr.clone(),
            service_cidr: config.service_cidr.clone(),
        },
    };
    let shutdown = CancellationToken::new();
    let results = Arc::new(crate::api::results::ApiResults::new(ctx.clone()));
    let engine = Engine::new(ctx.clone(), results, shutdown.clone());

    let mut tasks = Vec::new();
    let agents_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        info!(addr = %agents_addr, advertise = ?advertise, "agent endpoint listening");
        if let Err(err) = hub
            .serve(agents_listener, server_cert, async move {
                agents_shutdown.cancelled().await;
            })
            .await
        {
            warn!(error = %crate::error_chain(&err), "agent endpoint stopped");
        }
    }));
    tasks.push(crate::jobs::spawn_pruner(
        ctx.jobs.clone(),
        config.job_retention,
        crate::jobs::PRUNE_EVERY,
        crate::store::now,
        shutdown.clone(),
    ));
    let resumed = engine.resume_all()?;
    if resumed > 0 {
        info!(resumed, "resumed workflows interrupted by the last stop");
    }
    // After the resume: clusters with an operation under way are the workflows', not its.
    let reconciler = crate::reconcile::Reconciler::new(ctx.clone(), crate::reconcile::NODE_GRACE);
    tasks.push(tokio::spawn(reconciler.run(shutdown.clone())));
    let api = Api {
        ctx: ctx.clone(),
        identity,
        engine: engine.clone(),
        signatures: config.signatures,
        replays: Arc::new(crate::api::replay::ReplayCache::default()),
        limits: Arc::new(crate::api::limits::CallerLimits::default()),
        sources: config.api_forward_per_source.map(|rate| {
            Arc::new(crate::api::limits::CallerLimits::new(
                rate,
                rate.saturating_mul(2),
                crate::api::limits::MAX_KEYS,
            ))
        }),
        forwarder,
        forwarding: Arc::new(tokio::sync::Semaphore::new(
            crate::api::MAX_FORWARDED_IN_FLIGHT,
        )),
    };
    let api_shutdown = shutdown.clone();
    let tls = api_certs.as_ref().map(CertReloader::acceptor).transpose()?;
    reload_on_sighup(api_certs, shutdown.clone());
    let limits = config.api_limits;
    tasks.push(tokio::spawn(async move {
        if let Err(err) = crate::api::serve(api, api_listener, tls, limits, async move {
            api_shutdown.cancelled().await;
        })
        .await
        {
            warn!(error = %err, "API server stopped");
        }
    }));
    info!(
        api = %api_addr,
        agents = %agents_addr,
        cloudstack = %config.endpoint,
        data_dir = %data.display(),
        "cks-controller started"
    );
    Ok(Running {
        api_addr,
        agents_addr,
        ctx,
        engine,
        shutdown,
        tasks,
        _lock: lock,
    })
}
