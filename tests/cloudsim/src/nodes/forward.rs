//! The simulated virtual routers' data path: userspace TCP forwarders.
//!
//! One task, the [`NetManager`], owns every listener and reconciles them with what must be
//! served, whenever the [`ForwardingTable`] changes or a node's namespace comes or goes:
//! * on the host, one listener per public `ip:port` (public IPs are `127.x` addresses, local on
//!   any Linux host), admitting clients the firewall rules allow;
//! * inside every node's namespace, the same public listeners (so a node reaching its cluster's
//!   public IP lands on the same backends: hairpin, as on CloudStack's virtual router; clients of
//!   the same network bypass the ingress firewall, others appear from their network's source NAT
//!   address), and one listener per egress endpoint (`127.0.0.1:PORT` inside the node forwards to
//!   the same address on the host, where the controller listens).
//!
//! Backends are dialled from the network's router namespace, which sits on the network's bridge,
//! so connections reach the guest address exactly as routed traffic would.
//!
//! A connection that cannot be forwarded (firewall, no running backend, endpoint down) is reset,
//! so clients see a refusal at once rather than a timeout (a real virtual router drops such
//! packets). Established connections stay up when a rule changes; they are cut when their
//! listener goes (rule deleted, node stopped) or at shutdown.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::netns;
use crate::forwarding::{Balance, ForwardingTable, PublicListener};

/// How long a backend may take to accept a connection.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages to the [`NetManager`].
#[derive(Debug)]
pub enum NetMsg {
    /// Serve this table from now on.
    Table(ForwardingTable),
    /// A node's namespace is up; answer once its listeners are in place.
    NodeUp {
        /// VM id.
        vm_id: String,
        /// Its namespace.
        netns: PathBuf,
        /// Its networks, the default one first.
        networks: Vec<String>,
        /// Answered when done.
        done: std::sync::mpsc::Sender<()>,
    },
    /// A node is going down; answer once nothing listens in its namespace any more.
    NodeDown {
        /// VM id.
        vm_id: String,
        /// Answered when done.
        done: std::sync::mpsc::Sender<()>,
    },
    /// Close everything; answer when done.
    Shutdown(std::sync::mpsc::Sender<()>),
}

/// Where a listener lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Place {
    Host,
    Node(String),
}

/// How the source address is checked against the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firewall {
    /// The client's own address (connections from the host).
    PeerAddress,
    /// A node of another network: it appears from its network's source NAT address.
    From(Ipv4Addr),
    /// A node of the same network (hairpin): no ingress firewall.
    Open,
}

/// What a listener does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Forward to the rule's backends, dialled from `router`.
    Public {
        listener: PublicListener,
        firewall: Firewall,
        router: PathBuf,
    },
    /// Forward to this host endpoint, from the node network's source NAT address when it has
    /// one (as CloudStack's virtual router makes isolated and VPC nodes appear); from the
    /// host's loopback otherwise.
    Egress(SocketAddrV4, Option<Ipv4Addr>),
}

struct RunningListener {
    route: watch::Sender<Route>,
    task: JoinHandle<()>,
}

struct NodeNet {
    netns: PathBuf,
    networks: Vec<String>,
}

/// The owner of every forwarder; see the module documentation.
pub struct NetManager {
    namespaces: bool,
    egress: Vec<SocketAddrV4>,
    router_of: Box<dyn Fn(&str) -> PathBuf + Send>,
    table: ForwardingTable,
    nodes: BTreeMap<String, NodeNet>,
    listeners: HashMap<(Place, SocketAddrV4), RunningListener>,
}

// === impl NetManager ===

impl NetManager {
    /// A manager; with `namespaces` false (loopback nodes) it serves nothing.
    pub fn new(
        namespaces: bool,
        egress: Vec<SocketAddrV4>,
        router_of: Box<dyn Fn(&str) -> PathBuf + Send>,
    ) -> Self {
        NetManager {
            namespaces,
            egress,
            router_of,
            table: ForwardingTable::default(),
            nodes: BTreeMap::new(),
            listeners: HashMap::new(),
        }
    }

    /// Handles messages until [`NetMsg::Shutdown`] or until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<NetMsg>) {
        while let Some(msg) = rx.recv().await {
            match msg {
                NetMsg::Table(table) => {
                    if table != self.table {
                        self.table = table;
                        self.reconcile().await;
                    }
                }
                NetMsg::NodeUp {
                    vm_id,
                    netns,
                    networks,
                    done,
                } => {
                    self.nodes.insert(vm_id, NodeNet { netns, networks });
                    self.reconcile().await;
                    let _ = done.send(());
                }
                NetMsg::NodeDown { vm_id, done } => {
                    self.nodes.remove(&vm_id);
                    self.reconcile().await;
                    let _ = done.send(());
                }
                NetMsg::Shutdown(done) => {
                    self.close_all();
                    let _ = done.send(());
                    return;
                }
            }
        }
        self.close_all();
    }

    fn close_all(&mut self) {
        for (_, listener) in self.listeners.drain() {
            listener.task.abort();
        }
    }

    fn desired(&self) -> BTreeMap<(Place, SocketAddrV4), Route> {
        let mut out = BTreeMap::new();
        if !self.namespaces {
            return out;
        }
        for listener in &self.table.listeners {
            out.insert(
                (Place::Host, listener.addr),
                Route::Public {
                    listener: listener.clone(),
                    firewall: Firewall::PeerAddress,
                    router: (self.router_of)(&listener.network_id),
                },
            );
        }
        for (vm_id, node) in &self.nodes {
            for listener in &self.table.listeners {
                let firewall = if node.networks.contains(&listener.network_id) {
                    Firewall::Open
                } else {
                    let source = node
                        .networks
                        .first()
                        .and_then(|n| self.table.source_nat.get(n))
                        .copied()
                        .unwrap_or(Ipv4Addr::LOCALHOST);
                    Firewall::From(source)
                };
                out.insert(
                    (Place::Node(vm_id.clone()), listener.addr),
                    Route::Public {
                        listener: listener.clone(),
                        firewall,
                        router: (self.router_of)(&listener.network_id),
                    },
                );
            }
            let source_nat = node
                .networks
                .first()
                .and_then(|n| self.table.source_nat.get(n))
                .copied();
            for egress in &self.egress {
                out.insert(
                    (Place::Node(vm_id.clone()), *egress),
                    Route::Egress(*egress, source_nat),
                );
            }
        }
        out
    }

    async fn reconcile(&mut self) {
        let desired = self.desired();
        let gone: Vec<_> = self
            .listeners
            .keys()
            .filter(|key| !desired.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(listener) = self.listeners.remove(&key) {
                listener.task.abort();
                tracing::debug!(place = ?key.0, addr = %key.1, "forwarder closed");
            }
        }
        for (key, route) in desired {
            if let Some(running) = self.listeners.get(&key) {
                running.route.send_if_modified(|current| {
                    let changed = *current != route;
                    if changed {
                        *current = route.clone();
                    }
                    changed
                });
                continue;
            }
            let bound = match &key.0 {
                Place::Host => TcpListener::bind(key.1).await,
                Place::Node(vm_id) => match self.nodes.get(vm_id) {
                    Some(node) => bind_in(node.netns.clone(), key.1).await,
                    None => continue,
                },
            };
            let listener = match bound {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::error!(
                        place = ?key.0,
                        addr = %key.1,
                        error = %err,
                        "cannot listen for a forwarded port; is another simulator using the same \
                         public range (see --public-cidr)?"
                    );
                    continue;
                }
            };
            tracing::debug!(place = ?key.0, addr = %key.1, "forwarder listening");
            let (tx, rx) = watch::channel(route);
            let task = tokio::spawn(serve(listener, rx));
            self.listeners
                .insert(key, RunningListener { route: tx, task });
        }
    }
}

/// Connects to `target` from `source` (a 127/8 address the host can bind) when given.
async fn dial_from(source: Option<Ipv4Addr>, target: SocketAddrV4) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(target.into()).await
}

async fn bind_in(ns: PathBuf, addr: SocketAddrV4) -> std::io::Result<TcpListener> {
    let listener = tokio::task::spawn_blocking(move || netns::bind(&ns, addr.into()))
        .await
        .map_err(std::io::Error::other)??;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn dial_in(ns: PathBuf, addr: SocketAddrV4) -> std::io::Result<TcpStream> {
    let stream =
        tokio::task::spawn_blocking(move || netns::connect(&ns, addr.into(), DIAL_TIMEOUT))
            .await
            .map_err(std::io::Error::other)??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Chooses backends for a listener; its counters outlive route updates.
#[derive(Default)]
struct Balancer {
    next: AtomicUsize,
    active: Mutex<HashMap<String, usize>>,
}

/// Decrements a backend's connection count when the connection ends.
struct ActiveGuard {
    balancer: Arc<Balancer>,
    vm_id: String,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut active = self
            .balancer
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = active.get_mut(&self.vm_id) {
            *count = count.saturating_sub(1);
        }
    }
}

// === impl Balancer ===

impl Balancer {
    /// Backend indices in the order to try them.
    fn order(&self, listener: &PublicListener, client: Ipv4Addr) -> Vec<usize> {
        let n = listener.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let first = match listener.balance {
            Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Balance::Source => {
                let hash = client
                    .octets()
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
                    });
                usize::try_from(hash % n as u64).unwrap_or(0)
            }
            Balance::LeastConn => {
                let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
                (0..n)
                    .min_by_key(|i| {
                        active
                            .get(&listener.backends[*i].vm_id)
                            .copied()
                            .unwrap_or(0)
                    })
                    .unwrap_or(0)
            }
        };
        (0..n).map(|i| (first + i) % n).collect()
    }

    fn track(self: &Arc<Self>, vm_id: &str) -> ActiveGuard {
        *self
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(vm_id.to_owned())
            .or_default() += 1;
        ActiveGuard {
            balancer: self.clone(),
            vm_id: vm_id.to_owned(),
        }
    }
}

async fn serve(listener: TcpListener, mut route: watch::Receiver<Route>) {
    let balancer = Arc::new(Balancer::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let current = route.borrow().clone();
                    tokio::spawn(forward(stream, peer, current, balancer.clone(), route.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            changed = route.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Resolves when the listener's route sender is dropped (listener closed).
async fn closed(mut route: watch::Receiver<Route>) {
    while route.changed().await.is_ok() {}
}

/// Closes `client` with a reset (zero linger), the nearest a listener can get to "refused".
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

async fn forward(
    mut client: TcpStream,
    peer: SocketAddr,
    route: Route,
    balancer: Arc<Balancer>,
    watch: watch::Receiver<Route>,
) {
    let (mut upstream, _guard) = match route {
        Route::Egress(target, source) => match dial_from(source, target).await {
            Ok(stream) => (stream, None),
            Err(err) => {
                tracing::debug!(%target, error = %err, "egress endpoint unreachable");
                reset(client);
                return;
            }
        },
        Route::Public {
            listener,
            firewall,
            router,
        } => {
            let client_ip = match peer {
                SocketAddr::V4(v4) => *v4.ip(),
                SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
            };
            let source = match firewall {
                Firewall::PeerAddress => Some(client_ip),
                Firewall::From(ip) => Some(ip),
                Firewall::Open => None,
            };
            if let Some(source) = source
                && !listener.admits(source)
            {
                tracing::debug!(addr = %listener.addr, %source, "refused by the firewall rules");
                reset(client);
                return;
            }
            let mut connected = None;
            for index in balancer.order(&listener, client_ip) {
                let backend = &listener.backends[index];
                match dial_in(router.clone(), backend.addr).await {
                    Ok(stream) => {
                        connected = Some((stream, Some(balancer.track(&backend.vm_id))));
                        break;
                    }
                    Err(err) => tracing::debug!(
                        backend = %backend.addr,
                        error = %err,
                        "backend unreachable; trying the next one"
                    ),
                }
            }
            match connected {
                Some(connected) => connected,
                None => {
                    tracing::debug!(addr = %listener.addr, "no backend reachable");
                    reset(client);
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        () = closed(watch) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarding::Backend;

    fn listener(balance: Balance, n: usize) -> PublicListener {
        PublicListener {
            addr: "127.64.0.2:80".parse().unwrap(),
            network_id: "net".into(),
            backends: (0..n)
                .map(|i| Backend {
                    vm_id: format!("vm{i}"),
                    addr: SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 2 + i as u8), 80),
                })
                .collect(),
            balance,
            allowed: Vec::new(),
        }
    }

    #[test]
    fn round_robin_rotates_and_tries_every_backend() {
        let balancer = Balancer::default();
        let l = listener(Balance::RoundRobin, 3);
        let firsts: Vec<usize> = (0..4)
            .map(|_| balancer.order(&l, Ipv4Addr::LOCALHOST)[0])
            .collect();
        assert_eq!(firsts, vec![0, 1, 2, 0]);
        assert_eq!(balancer.order(&l, Ipv4Addr::LOCALHOST), vec![1, 2, 0]);
        assert!(
            balancer
                .order(&listener(Balance::RoundRobin, 0), Ipv4Addr::LOCALHOST)
                .is_empty()
        );
    }

    #[test]
    fn source_sticks_and_leastconn_counts() {
        let balancer = Arc::new(Balancer::default());
        let l = listener(Balance::Source, 3);
        let a = balancer.order(&l, Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(a, balancer.order(&l, Ipv4Addr::new(127, 0, 0, 1)));
        let l = listener(Balance::LeastConn, 2);
        let busy = balancer.track("vm0");
        assert_eq!(balancer.order(&l, Ipv4Addr::LOCALHOST)[0], 1);
        drop(busy);
        assert_eq!(balancer.order(&l, Ipv4Addr::LOCALHOST)[0], 0);
    }

    #[test]
    fn loopback_nodes_serve_nothing_and_namespaces_get_hairpin_and_egress() {
        let egress: SocketAddrV4 = "127.0.0.1:9443".parse().unwrap();
        let mut manager = NetManager::new(
            true,
            vec![egress],
            Box::new(|n| PathBuf::from(format!("/run/netns/r-{n}"))),
        );
        let mut l = listener(Balance::RoundRobin, 1);
        l.network_id = "net-a".into();
        manager.table = ForwardingTable {
            listeners: vec![l.clone()],
            source_nat: [("net-b".to_owned(), Ipv4Addr::new(127, 64, 0, 9))].into(),
        };
        for (vm, net) in [("vm-a", "net-a"), ("vm-b", "net-b")] {
            manager.nodes.insert(
                vm.into(),
                NodeNet {
                    netns: PathBuf::from(format!("/run/netns/{vm}")),
                    networks: vec![net.into()],
                },
            );
        }
        let desired = manager.desired();
        assert_eq!(desired.len(), 5, "host + 2 hairpin + 2 egress");
        let firewall = |vm: &str| match &desired[&(Place::Node(vm.into()), l.addr)] {
            Route::Public { firewall, .. } => *firewall,
            Route::Egress(..) => panic!("not public"),
        };
        assert_eq!(firewall("vm-a"), Firewall::Open);
        assert_eq!(
            firewall("vm-b"),
            Firewall::From(Ipv4Addr::new(127, 64, 0, 9))
        );
        // vm-b's network has a source NAT address: it reaches the host endpoint from there;
        // vm-a's (shared) has none.
        assert_eq!(
            desired[&(Place::Node("vm-b".into()), egress)],
            Route::Egress(egress, Some(Ipv4Addr::new(127, 64, 0, 9)))
        );
        assert_eq!(
            desired[&(Place::Node("vm-a".into()), egress)],
            Route::Egress(egress, None)
        );
        manager.namespaces = false;
        assert!(manager.desired().is_empty());
    }
}
