//! A running node: one userspace stack per configured interface, the
//! services of its configuration, and its control socket. `plebnet node`
//! is a thin command around [`Node::start`].
//!
//! ```text
//!   kernel programs ── forward (kernel listener) ──┐        ┌── reverse ── kernel server
//!                                                  ▼        │
//!   echo / discard ◀── Stack (per interface) ◀── NIC: udp │ tap │ tun  ──▶ underlay
//! ```
//!
//! Multipath forwards and responders (`mp@A,B:PORT`) send each leg through
//! the interface that reaches its address; the protocol itself comes from
//! plebnet-transport through [`NodeOptions::multipath`] (see [`multipath`]).

mod control;
pub mod multipath;
mod services;
mod splice;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use plebnet_netstack::nic::{
    Capture, Impair, ImpairConfig, Nic, TunTapConfig, TunTapKind, TunTapNic, UdpNic, UdpNicConfig, UdpPeer,
};
use plebnet_netstack::{Cidr, Route, Stack, StackConfig};
use serde_json::{Value, json};

pub use control::{ControlServer, request};
pub use multipath::{
    MultipathAcceptor, MultipathDialer, MultipathService, MultipathStats, MultipathTransport, OverlayStream, PathStats,
};
pub use services::ServiceCounters;
pub use splice::{Spliced, splice, splice_overlay};

use crate::config::{InterfaceConfig, InterfaceKind, NodeConfig, Protocol, ServiceConfig};
use crate::net::{NetStack, OsStack};

/// Why a node could not start.
#[derive(Debug)]
pub enum NodeError {
    /// An interface's NIC or stack could not be made.
    Interface {
        /// The interface's name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A service could not bind or start.
    Service {
        /// Its index in the file.
        index: usize,
        /// What it is.
        what: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The control socket could not be opened.
    Control(std::io::Error),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Interface { name, message } => write!(f, "interface {name}: {message}"),
            NodeError::Service { index, what, error } => write!(f, "service[{index}] ({what}): {error}"),
            NodeError::Control(e) => write!(f, "control socket: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Options given on the command line rather than in the file.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// Capture every interface's traffic here (with several interfaces,
    /// `-<name>` is added before the extension).
    pub pcap: Option<PathBuf>,
    /// The multipath protocol, for `mp@` services: plebnet-transport's
    /// `plebnet_transport::multipath::NodeMultipath` (this crate cannot
    /// name it, as plebnet-transport depends on it). Without it, a
    /// configuration with `mp@` services fails to start with a message
    /// saying so.
    pub multipath: Option<Arc<dyn MultipathTransport>>,
}

/// One interface of a running node.
#[derive(Debug)]
pub struct NodeInterface {
    /// Its name.
    pub name: String,
    /// udp, tap or tun.
    pub kind: InterfaceKind,
    /// Its stack.
    pub stack: Stack,
    /// Its overlay prefixes.
    pub addresses: Vec<Cidr>,
    /// The kernel's name for a tap/tun device, or the UDP socket address.
    pub underlay: String,
}

/// A started service.
#[derive(Debug)]
pub struct NodeService {
    /// What the file asked for.
    pub config: ServiceConfig,
    /// Where it listens (with the actual port if the file gave 0).
    pub bound: SocketAddr,
    /// Its live counts.
    pub counters: Arc<ServiceCounters>,
    /// A multipath service's tunnels and legs.
    pub multipath: Option<Arc<dyn MultipathService>>,
}

/// A running node. Dropping it closes the control socket; stacks stop when
/// their last socket closes.
#[derive(Debug)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// Its interfaces, in file order.
    pub interfaces: Vec<NodeInterface>,
    /// Its services, in file order.
    pub services: Vec<NodeService>,
    control: Option<ControlServer>,
}

impl Node {
    /// Builds every interface, starts every service and the control socket.
    pub fn start(config: &NodeConfig, options: &NodeOptions) -> Result<Node, NodeError> {
        let mut interfaces = Vec::new();
        for (i, iface) in config.interfaces.iter().enumerate() {
            let name = iface.name_or(i);
            let pcap =
                options.pcap.as_ref().map(|p| pcap_path(p, &name, config.interfaces.len())).or(iface.pcap.clone());
            let (stack, underlay) = build_interface(config, i, iface, pcap.as_deref())
                .map_err(|message| NodeError::Interface { name: name.clone(), message })?;
            let addresses = iface.addresses.iter().map(|a| a.get_ref().0).collect();
            interfaces.push(NodeInterface { name, kind: iface.kind, stack, addresses, underlay });
        }
        let mut node = Node { name: config.name.clone(), interfaces, services: Vec::new(), control: None };
        for (index, svc) in config.services.iter().enumerate() {
            let svc = svc.get_ref().clone();
            let counters = Arc::new(ServiceCounters::default());
            let what = format!("{svc:?}");
            let (bound, multipath) = node
                .start_service(config, options, &svc, counters.clone())
                .map_err(|error| NodeError::Service { index, what, error })?;
            log::info!("node {}: service {svc:?} on {bound}", node.name);
            node.services.push(NodeService { config: svc, bound, counters, multipath });
        }
        if let Some(ctl) = &config.control {
            let snapshot = node.stats_source();
            node.control = Some(ControlServer::start(&ctl.socket, snapshot).map_err(NodeError::Control)?);
        }
        Ok(node)
    }

    /// Starts one service; returns where it listens and, for a multipath
    /// service, its stats source.
    fn start_service(
        &self,
        config: &NodeConfig,
        options: &NodeOptions,
        svc: &ServiceConfig,
        counters: Arc<ServiceCounters>,
    ) -> std::io::Result<(SocketAddr, Option<Arc<dyn MultipathService>>)> {
        let no_stack = || std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no interface for this address");
        let transport = || options.multipath.as_ref().ok_or_else(multipath::unsupported);
        let plain = |bound: SocketAddr| (bound, None);
        match svc {
            &ServiceConfig::Echo { protocol, listen } | &ServiceConfig::Discard { protocol, listen } => {
                let stack = self.stack_owning(listen.ip()).ok_or_else(no_stack)?;
                let echo = matches!(svc, ServiceConfig::Echo { .. });
                match (protocol, echo) {
                    (Protocol::Tcp, true) => services::tcp_echo(stack, listen, counters),
                    (Protocol::Tcp, false) => services::tcp_discard(stack, listen, counters),
                    (Protocol::Udp, reply) => services::udp_service(stack, listen, reply, counters),
                }
                .map(plain)
            }
            &ServiceConfig::Forward { listen, connect } => {
                let stack = self.stack_reaching(connect.ip()).ok_or_else(no_stack)?;
                services::relay(&OsStack, listen, stack.clone(), connect, counters).map(plain)
            }
            &ServiceConfig::Reverse { listen, connect } => {
                let stack = self.stack_owning(listen.ip()).ok_or_else(no_stack)?;
                services::relay(stack, listen, OsStack, connect, counters).map(plain)
            }
            ServiceConfig::MultipathForward { listen, paths, pin, scheduler } => {
                // Each leg through the interface that reaches its address.
                let via = paths
                    .iter()
                    .map(|p| Ok((self.stack_reaching(p.ip()).ok_or_else(no_stack)?.clone(), *p)))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let dialer = transport()?.dialer(via, *pin, *scheduler)?;
                let bound = multipath::forward(*listen, dialer.clone(), counters)?;
                Ok((bound, Some(dialer)))
            }
            ServiceConfig::MultipathReverse { paths, connect } => {
                let identity = config.identity.as_ref().ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "a multipath reverse needs [tls]")
                })?;
                let listeners = paths
                    .iter()
                    .map(|p| self.stack_owning(p.ip()).ok_or_else(no_stack)?.tcp_listen(*p))
                    .collect::<std::io::Result<Vec<_>>>()?;
                let acceptor = transport()?.responder(listeners, identity)?;
                multipath::reverse(acceptor.clone(), *connect, counters)?;
                Ok((paths[0], Some(acceptor)))
            }
        }
    }

    /// The stack that has `ip` as an address (any stack for 0.0.0.0 / ::).
    pub fn stack_owning(&self, ip: IpAddr) -> Option<&Stack> {
        self.interfaces
            .iter()
            .find(|i| {
                i.addresses.iter().any(|a| a.addr == ip || (ip.is_unspecified() && a.addr.is_ipv4() == ip.is_ipv4()))
            })
            .map(|i| &i.stack)
    }

    /// The stack whose prefixes (or, failing that, routes) reach `ip`.
    pub fn stack_reaching(&self, ip: IpAddr) -> Option<&Stack> {
        self.interfaces
            .iter()
            .find(|i| i.addresses.iter().any(|a| a.contains(ip)))
            .or_else(|| self.interfaces.iter().find(|i| i.stack.routes().iter().any(|r| r.dest.contains(ip))))
            .map(|i| &i.stack)
    }

    /// Everything `plebnet ctl stats` reports, as JSON.
    pub fn stats(&self) -> Value {
        (self.stats_source())()
    }

    fn stats_source(&self) -> Arc<dyn Fn() -> Value + Send + Sync> {
        let name = self.name.clone();
        let ifaces: Vec<(String, InterfaceKind, Stack, String)> =
            self.interfaces.iter().map(|i| (i.name.clone(), i.kind, i.stack.clone(), i.underlay.clone())).collect();
        type ServiceSource = (String, SocketAddr, Arc<ServiceCounters>, Option<Arc<dyn MultipathService>>);
        let services: Vec<ServiceSource> = self
            .services
            .iter()
            .map(|s| (format!("{:?}", s.config), s.bound, s.counters.clone(), s.multipath.clone()))
            .collect();
        Arc::new(move || {
            let interfaces: Vec<Value> = ifaces
                .iter()
                .map(|(name, kind, stack, underlay)| {
                    let layers: serde_json::Map<String, Value> = stack
                        .counters()
                        .into_iter()
                        .map(|g| {
                            (g.layer, Value::Object(g.values.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()))
                        })
                        .collect();
                    json!({
                        "name": name,
                        "kind": format!("{kind:?}").to_lowercase(),
                        "underlay": underlay,
                        "addresses": stack.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "counters": layers,
                        "tcp_sockets": stack.tcp_socket_info().iter().map(|s| json!({
                            "local": s.local.map(|a| a.to_string()),
                            "remote": s.remote.map(|a| a.to_string()),
                            "state": s.state,
                            "send_queue": s.send_queue,
                            "recv_queue": s.recv_queue,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let services: Vec<Value> = services
                .iter()
                .map(|(what, bound, c, multipath)| {
                    let mut entry = json!({
                        "service": what,
                        "listen": bound.to_string(),
                        "accepted": c.accepted.load(Ordering::Relaxed),
                        "failed": c.failed.load(Ordering::Relaxed),
                        "bytes": c.bytes.load(Ordering::Relaxed),
                    });
                    if let Some(mp) = multipath {
                        entry["multipath"] = serde_json::to_value(mp.stats()).unwrap_or_default();
                    }
                    entry
                })
                .collect();
            json!({ "node": name, "interfaces": interfaces, "services": services })
        })
    }

    /// Where the control socket is, if the node opened one.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control.as_ref().map(|c| c.path())
    }
}

/// `base` for one interface, `base-<name>.<ext>` when there are several.
fn pcap_path(base: &Path, name: &str, interfaces: usize) -> PathBuf {
    if interfaces <= 1 {
        return base.to_path_buf();
    }
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = base.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    base.with_file_name(format!("{stem}-{name}{ext}"))
}

/// The stack settings of interface `i`.
fn stack_config(config: &NodeConfig, i: usize, iface: &InterfaceConfig) -> StackConfig {
    let addresses: Vec<Cidr> = iface.addresses.iter().map(|a| a.get_ref().0).collect();
    let routes = config
        .routes
        .iter()
        .map(|r| r.get_ref())
        .filter(|r| addresses.iter().any(|a| a.contains(r.via)))
        .map(|r| Route { dest: r.dest.0, via: r.via })
        .collect();
    StackConfig {
        name: format!("{}/{}", config.name, iface.name_or(i)),
        addresses,
        routes,
        tcp_rx_buffer: config.tcp.rx_buffer,
        tcp_tx_buffer: config.tcp.tx_buffer,
        default_backlog: config.tcp.backlog,
        tcp_recovery_assist: config.tcp.recovery_assist,
        max_connections: config.tcp.max_connections.as_ref().map(|m| *m.get_ref()),
        max_connections_per_peer: config.tcp.max_connections_per_peer.as_ref().map(|m| *m.get_ref()),
        tcp_buffer_idle_release: config
            .tcp
            .buffer_idle_release_ms
            .as_ref()
            .map_or(StackConfig::default().tcp_buffer_idle_release, |ms| {
                std::time::Duration::from_millis(*ms.get_ref())
            }),
        seed: config.seed.map(|s| s.wrapping_add(i as u64)),
        // UDP has no flow control: a node's UDP sockets (and the programs a
        // preloaded process runs, such as nc) take bursts as large as the
        // UdpNic's kernel socket buffer (4 MiB) without dropping. The memory
        // is calloc'd, so it is resident only as far as a burst fills it.
        udp_buffer: 4 << 20,
        udp_packets: 2048,
        ..StackConfig::default()
    }
}

/// Opens interface `i`'s NIC, wraps it as the file asks, starts its stack.
fn build_interface(
    config: &NodeConfig,
    i: usize,
    iface: &InterfaceConfig,
    pcap: Option<&Path>,
) -> Result<(Stack, String), String> {
    let stack_config = stack_config(config, i, iface);
    let mtu = iface.effective_mtu();
    match iface.kind {
        InterfaceKind::Udp => {
            let listen = *iface.listen.as_ref().ok_or("a udp interface needs `listen`")?.get_ref();
            let peers = iface
                .peers
                .iter()
                .map(|p| UdpPeer {
                    endpoint: *p.endpoint.get_ref(),
                    prefixes: p.prefixes.iter().map(|c| c.get_ref().0).collect(),
                })
                .collect();
            let defaults = UdpNicConfig::default();
            let nic_config = UdpNicConfig {
                mtu,
                batch: iface.batch.unwrap_or(defaults.batch),
                socket_buffer: iface.socket_buffer.unwrap_or(defaults.socket_buffer),
                offload: iface.offload.unwrap_or(defaults.offload),
                ..defaults
            };
            let nic = UdpNic::bind(listen, peers, nic_config).map_err(|e| e.to_string())?;
            let underlay = nic.local_addr().map(|a| a.to_string()).unwrap_or_default();
            Ok((wrap(config, iface, stack_config, nic, pcap)?, underlay))
        }
        InterfaceKind::Tap | InterfaceKind::Tun => {
            let kind = if iface.kind == InterfaceKind::Tap { TunTapKind::Tap } else { TunTapKind::Tun };
            let nic = TunTapNic::open(TunTapConfig {
                kind,
                name: iface.device.as_ref().map(|d| d.get_ref().clone()).unwrap_or_default(),
                mtu,
                mac: iface.mac.as_ref().map(|m| m.get_ref().0),
                offload: iface.offload.unwrap_or(true),
            })
            .map_err(|e| e.to_string())?;
            let underlay = nic.name().to_string();
            Ok((wrap(config, iface, stack_config, nic, pcap)?, underlay))
        }
    }
}

/// Adds the impairment and capture layers the file asks for: the capture
/// is outermost, so it records exactly what the stack sent and received.
fn wrap<N: Nic>(
    config: &NodeConfig,
    iface: &InterfaceConfig,
    stack_config: StackConfig,
    nic: N,
    pcap: Option<&Path>,
) -> Result<Stack, String> {
    match &iface.impair {
        Some(imp) => {
            let impair = ImpairConfig {
                seed: config.seed.unwrap_or(1),
                loss: imp.loss,
                duplicate: imp.duplicate,
                reorder: imp.reorder,
                corrupt: imp.corrupt,
                delay: std::time::Duration::from_millis(imp.delay_ms),
                ..ImpairConfig::default()
            };
            with_capture(stack_config, Impair::new(nic, impair), pcap)
        }
        None => with_capture(stack_config, nic, pcap),
    }
}

fn with_capture<N: Nic>(stack_config: StackConfig, nic: N, pcap: Option<&Path>) -> Result<Stack, String> {
    let stack = match pcap {
        Some(path) => {
            let nic = Capture::new(nic, path).map_err(|e| format!("pcap file {}: {e}", path.display()))?;
            Stack::new(stack_config, nic)
        }
        None => Stack::new(stack_config, nic),
    };
    stack.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn tcp_limits_reach_every_stack() {
        let text = r#"
name = "n"
[tcp]
max_connections = 5000
max_connections_per_peer = 50
buffer_idle_release_ms = 250

[[interface]]
kind = "udp"
addresses = ["10.78.0.1/24"]
listen = "127.0.0.1:0"
"#;
        let config = NodeConfig::parse(Path::new("n.toml"), text).unwrap();
        let stack = stack_config(&config, 0, &config.interfaces[0]);
        assert_eq!((stack.max_connections, stack.max_connections_per_peer), (Some(5000), Some(50)));
        assert_eq!(stack.tcp_buffer_idle_release, std::time::Duration::from_millis(250));
        let unlimited = NodeConfig::parse(Path::new("n.toml"), &text.replace("max_connections", "#")).unwrap();
        let stack = stack_config(&unlimited, 0, &unlimited.interfaces[0]);
        assert_eq!((stack.max_connections, stack.max_connections_per_peer), (None, None));
        let default = NodeConfig::parse(Path::new("n.toml"), &text.replace("buffer_idle_release_ms", "#")).unwrap();
        let stack = stack_config(&default, 0, &default.interfaces[0]);
        assert_eq!(stack.tcp_buffer_idle_release, StackConfig::default().tcp_buffer_idle_release);
    }
}
