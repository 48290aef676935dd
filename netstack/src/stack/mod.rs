//! The stack: a smoltcp interface and its sockets, owned by one driver
//! thread, reached by any number of application threads through sockets.
//!
//! ```text
//!  app threads ── lock(Core) briefly, copy bytes, ring doorbell ──┐
//!                                                                │
//!  driver thread: loop { poll smoltcp under lock; upkeep; sleep on doorbell/NIC fd/deadline }
//!                       │
//!                 StackDevice (loopback, ingress checks, SYN guard, recovery assist, FIN keeper) ── NIC
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use smoltcp::iface::{Config, Interface, Route as SmolRoute};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use crate::nic::Nic;
use crate::rng::Rng;
use crate::stats::{CounterGroup, CounterSource, StackCounters};
use crate::wake::DriverWaker;

mod buffers;
mod config;
pub(crate) mod core;
mod device;
mod driver;
mod fin_keeper;
pub(crate) mod ingress;
mod limits;
mod link;
pub(crate) mod orphans;
mod ports;
mod recovery;
mod segment;
pub(crate) mod shards;
mod tables;
mod tidy;

pub use config::{Cidr, CidrParseError, Route, StackConfig, TcpBuffers};
pub use ports::PortError;

use self::core::Core;

/// Why a stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The configuration is inconsistent.
    #[error("invalid stack configuration: {0}")]
    Config(String),
    /// The operating system refused a resource (eventfd, thread).
    #[error("could not start the stack driver: {0}")]
    Os(#[from] std::io::Error),
}

impl From<StackError> for std::io::Error {
    fn from(e: StackError) -> Self {
        match e {
            StackError::Os(e) => e,
            e @ StackError::Config(_) => std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        }
    }
}

/// State shared by the stack handle, its sockets and its driver.
pub(crate) struct Shared {
    core: Mutex<Core>,
    pub(crate) waker: DriverWaker,
    pub(crate) counters: Arc<StackCounters>,
    nic_counters: Vec<(String, Arc<dyn CounterSource>)>,
    epoch: std::time::Instant,
    pub(crate) name: String,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> smoltcp::time::Instant {
        driver::smol_now(self.epoch)
    }
}

/// Stops the driver when the last handle (stack or socket) is gone.
struct Owner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.waker.wake();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// One TCP socket as [`Stack::tcp_socket_info`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocketInfo {
    /// Local endpoint (none for a listener bound to any address).
    pub local: Option<std::net::SocketAddr>,
    /// Remote endpoint, once connected.
    pub remote: Option<std::net::SocketAddr>,
    /// The RFC 793 state name, e.g. `ESTABLISHED`.
    pub state: String,
    /// Bytes waiting to be sent or acknowledged.
    pub send_queue: usize,
    /// Bytes received but not yet read.
    pub recv_queue: usize,
    /// The send buffer's capacity (see [`TcpBuffers`]).
    pub send_capacity: usize,
    /// The receive buffer's capacity (see [`TcpBuffers`]).
    pub recv_capacity: usize,
}

/// A running userspace TCP/IP stack. Cheap to clone; every socket keeps its
/// stack alive, and the driver thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct Stack {
    owner: Arc<Owner>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("name", &self.shared().name).finish()
    }
}

impl Stack {
    /// Builds a stack over `nic` and starts its driver thread.
    pub fn new<N: Nic>(config: StackConfig, mut nic: N) -> Result<Stack, StackError> {
        validate(&config)?;
        let seed = config.seed.unwrap_or_else(|| Rng::from_entropy().next_u64());
        let epoch = std::time::Instant::now();
        let counters = Arc::new(StackCounters::default());
        let waker = DriverWaker::new()?;
        let nic_counters = nic.counters();
        nic.attach(waker.clone());

        let local: Vec<IpAddress> = config.addresses.iter().map(|c| c.addr.into()).collect();
        let hardware = match nic.ethernet_address() {
            Some(mac) => HardwareAddress::Ethernet(smoltcp::wire::EthernetAddress(mac)),
            None => HardwareAddress::Ip,
        };
        let conns = limits::SharedConns::new(config.max_connections, config.max_connections_per_peer);
        let mut device = device::StackDevice::new(
            nic,
            local,
            counters.clone(),
            config.tcp_recovery_assist,
            config.tcp_challenge_ack_limit,
            conns.clone(),
        );
        let mut iface_config = Config::new(hardware);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, driver::smol_now(epoch));
        iface.update_ip_addrs(|addrs| {
            for c in &config.addresses {
                let _ = addrs.push(IpCidr::new(c.addr.into(), c.prefix));
            }
            let _ = addrs.push(IpCidr::new(Ipv4Address::LOCALHOST.into(), 8));
            let _ = addrs.push(IpCidr::new(Ipv6Address::LOCALHOST.into(), 128));
        });
        iface.routes_mut().update(|routes| {
            for r in &config.routes {
                let _ = routes.push(SmolRoute {
                    cidr: IpCidr::new(r.dest.addr.into(), r.dest.prefix),
                    via_router: r.via.into(),
                    preferred_until: None,
                    expires_at: None,
                });
            }
        });

        let name = config.name.clone();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(iface, config, counters.clone(), seed, conns)),
            waker,
            counters,
            nic_counters,
            epoch,
            name: name.clone(),
        });
        let driver_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("plebnet-{name}"))
            .spawn(move || driver::run(driver_shared, device))?;
        Ok(Stack { owner: Arc::new(Owner { shared, thread: Mutex::new(Some(thread)) }) })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.owner.shared
    }

    /// The stack's name.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// The overlay addresses this stack was configured with.
    pub fn addresses(&self) -> Vec<Cidr> {
        self.shared().lock().config.addresses.clone()
    }

    /// The stack's own counters.
    pub fn stack_counters(&self) -> Arc<StackCounters> {
        self.shared().counters.clone()
    }

    /// Every counter of the stack and its NIC layers, grouped by layer.
    pub fn counters(&self) -> Vec<CounterGroup> {
        let shared = self.shared();
        let mut groups = vec![CounterGroup { layer: "stack".to_string(), values: shared.counters.snapshot() }];
        for (layer, source) in &shared.nic_counters {
            groups.push(CounterGroup { layer: layer.clone(), values: source.snapshot() });
        }
        groups
    }

    /// Number of sockets smoltcp currently holds (connections, listening
    /// sockets, lingering closes).
    pub fn socket_count(&self) -> usize {
        self.shared().lock().sockets.len()
    }

    /// Bytes of TCP buffer memory resident now, over all the stack's
    /// sockets: only pages that hold or held data and were not given back
    /// (see [`TcpBuffers`]). Costs a `mincore(2)` per slab of buffers and a
    /// byte of scratch per page of them: a diagnostic, not for hot paths.
    pub fn tcp_buffer_resident_bytes(&self) -> usize {
        self.shared().lock().sockets.buffer_resident_bytes()
    }

    /// TCP connections the stack holds, as its connection limits count
    /// them (`StackConfig::max_connections`): every socket with a
    /// connection in any state, until the socket is gone; not listeners.
    pub fn connection_count(&self) -> usize {
        self.shared().lock().connection_count()
    }

    /// The static routes the stack was configured with.
    pub fn routes(&self) -> Vec<Route> {
        self.shared().lock().config.routes.clone()
    }

    /// Every TCP socket's endpoints, state and queue lengths.
    pub fn tcp_socket_info(&self) -> Vec<TcpSocketInfo> {
        let core = self.shared().lock();
        core.sockets
            .iter()
            .filter_map(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => Some(TcpSocketInfo {
                    local: t.local_endpoint().map(|e| std::net::SocketAddr::new(e.addr.into(), e.port)),
                    remote: t.remote_endpoint().map(|e| std::net::SocketAddr::new(e.addr.into(), e.port)),
                    state: t.state().to_string(),
                    send_queue: t.send_queue(),
                    recv_queue: t.recv_queue(),
                    send_capacity: t.send_capacity(),
                    recv_capacity: t.recv_capacity(),
                }),
                _ => None,
            })
            .collect()
    }

    /// True while the stack holds datagrams the network has not taken: a
    /// UDP socket's queued datagrams, or packets the NIC keeps because the
    /// kernel would not take them yet. (TCP's unsent bytes are in
    /// [`tcp_socket_info`](Self::tcp_socket_info).) A process that must not
    /// exit with datagrams it sent still inside waits for this to be false.
    pub fn has_unsent_datagrams(&self) -> bool {
        let core = self.shared().lock();
        core.nic_backlog
            || core.sockets.iter().any(|(_, s)| matches!(s, smoltcp::socket::Socket::Udp(u) if u.send_queue() > 0))
    }

    /// One line per TCP socket: endpoints, state and queue lengths; for
    /// diagnosing stalls.
    pub fn describe_tcp_sockets(&self) -> Vec<String> {
        let core = self.shared().lock();
        core.sockets
            .iter()
            .filter_map(|(_, s)| match s {
                smoltcp::socket::Socket::Tcp(t) => Some(format!(
                    "{:?} -> {:?} {} sendq={} recvq={} rx_cap={} tx_cap={}",
                    t.local_endpoint(),
                    t.remote_endpoint(),
                    t.state(),
                    t.send_queue(),
                    t.recv_queue(),
                    t.recv_capacity(),
                    t.send_capacity(),
                )),
                _ => None,
            })
            .collect()
    }

    /// Rings the driver.
    pub(crate) fn wake_driver(&self) {
        self.shared().waker.wake();
    }
}

fn validate(config: &StackConfig) -> Result<(), StackError> {
    for c in &config.addresses {
        if c.addr.is_loopback() || c.addr.is_unspecified() || c.addr.is_multicast() {
            return Err(StackError::Config(format!(
                "address {c} cannot be an interface address (loopback is built in; use a unicast overlay address)"
            )));
        }
    }
    if config.addresses.len() > 6 {
        return Err(StackError::Config(format!(
            "{} addresses given; a stack holds at most 6 besides 127.0.0.1 and ::1",
            config.addresses.len()
        )));
    }
    for r in &config.routes {
        if r.dest.addr.is_ipv4() != r.via.is_ipv4() {
            return Err(StackError::Config(format!("route to {} via {}: families differ", r.dest, r.via)));
        }
        if !config.addresses.iter().any(|c| c.contains(r.via)) {
            return Err(StackError::Config(format!(
                "route to {} via {}: the next hop is not on any attached prefix",
                r.dest, r.via
            )));
        }
    }
    if config.max_connections == Some(0) || config.max_connections_per_peer == Some(0) {
        return Err(StackError::Config(
            "max_connections and max_connections_per_peer must be at least 1 (None: no limit)".to_string(),
        ));
    }
    config.tcp_buffers().validate().map_err(StackError::Config)?;
    Ok(())
}
