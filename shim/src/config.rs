//! Node configuration: the TOML file that describes one plebnet node — its
//! interfaces (UDP, tap or tun), addresses, peers, routes, socket buffers,
//! services (multipath ones with the `mp@A,B:PORT` form), TLS identity and
//! control socket. docs/config.md documents every key; `configs/` holds
//! working examples.
//!
//! [`NodeConfig::load`] parses and validates in one go. Every error names
//! the file, the line and column, and the field, e.g.
//!
//! ```text
//! configs/a.toml:7:15: interface[0].peer[1].prefixes: 10.7.0.0/16 overlaps 10.0.0.0/8 of peer 127.0.0.1:4001
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use plebnet_netstack::Cidr;
use plebnet_netstack::nic::{MAX_MTU, MIN_MTU, UdpNicConfig};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

mod service;
mod tls;

pub use service::{MultipathScheduler, PeerPin, ServiceConfig, parse_multipath_address};
pub use tls::{TlsIdentity, TlsSection};

/// A problem with a configuration file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place.
    pub position: Option<(usize, usize)>,
    /// The field, as a path such as `interface[0].mtu` (empty when the
    /// parser cannot tell).
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The offending line of the file, for display.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if let (Some((line, _)), Some(text)) = (self.position, &self.source_line) {
            write!(f, "\n  {line:>4} | {text}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A whole node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name for logs and stats (default `plebnet`).
    #[serde(default = "default_name")]
    pub name: String,
    /// Seed for initial sequence numbers, port choice and impairment.
    pub seed: Option<u64>,
    /// The interfaces; each runs its own userspace stack.
    #[serde(default, rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// Static routes, each taken by the interface whose prefix holds `via`.
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// TCP settings for every stack of the node.
    #[serde(default)]
    pub tcp: TcpConfig,
    /// Services the node runs, checked and converted from the file's
    /// `[[service]]` tables (each with the position of its table).
    #[serde(skip)]
    pub services: Vec<Spanned<ServiceConfig>>,
    /// The `[[service]]` tables as written; emptied into `services`.
    #[serde(default, rename = "service")]
    service_tables: Vec<Spanned<service::ServiceTable>>,
    /// The node's certificate and key files, for multipath responders.
    pub tls: Option<TlsSection>,
    /// What `tls` names, read when the file was loaded.
    #[serde(skip)]
    pub identity: Option<TlsIdentity>,
    /// The control socket for `plebnet ctl`.
    pub control: Option<ControlConfig>,
    /// Settings of the LD_PRELOAD shim (`plebnet run`); other commands
    /// ignore them.
    #[serde(default)]
    pub preload: PreloadConfig,
}

/// Where a preloaded program's loopback traffic goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopbackPolicy {
    /// 127.0.0.0/8 and ::1 are the kernel's (the default).
    #[default]
    Kernel,
    /// 127.0.0.0/8 and ::1 are the plebnet stack's own loopback.
    Plebnet,
}

/// The `[preload]` section: how `plebnet run` routes a program's sockets
/// (docs/shim.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreloadConfig {
    /// Refuse every destination that is neither an overlay prefix nor
    /// loopback, and never let a DNS query reach the kernel.
    #[serde(default)]
    pub strict: bool,
    /// Where loopback goes.
    #[serde(default)]
    pub loopback: LoopbackPolicy,
    /// Names that resolve to overlay addresses (`getaddrinfo`,
    /// `gethostbyname`), e.g. `hosts = { "b.overlay" = "10.77.0.2" }`.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, IpAddr>,
}

fn default_name() -> String {
    "plebnet".to_string()
}

/// The kind of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceKind {
    /// Overlay packets in kernel UDP datagrams (no privilege needed).
    Udp,
    /// A kernel tap device (Ethernet; needs CAP_NET_ADMIN).
    Tap,
    /// A kernel tun device (IP; needs CAP_NET_ADMIN).
    Tun,
}

/// One interface and the stack on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Name for logs and stats (default `if<N>`).
    pub name: Option<String>,
    /// udp, tap or tun.
    pub kind: InterfaceKind,
    /// Overlay addresses with prefix lengths.
    pub addresses: Vec<Spanned<CidrValue>>,
    /// Largest IP packet (default 1400 for udp, 1500 for tap/tun).
    pub mtu: Option<Spanned<usize>>,
    /// udp: the underlay address the socket binds, e.g. `127.0.0.1:4001`.
    pub listen: Option<Spanned<SocketAddr>>,
    /// udp: the peers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerConfig>,
    /// udp: datagrams per recvmmsg/sendmmsg (default 64).
    pub batch: Option<usize>,
    /// udp: kernel socket buffer in bytes (default 4 MiB).
    pub socket_buffer: Option<usize>,
    /// Offload with the kernel (default true): UDP GSO/GRO for udp,
    /// checksum and TCP segmentation offload for tap/tun.
    pub offload: Option<bool>,
    /// tap/tun: the device name (default: the kernel picks).
    pub device: Option<Spanned<String>>,
    /// tap: the MAC address, `02:00:00:00:00:01` form (default random).
    pub mac: Option<Spanned<MacValue>>,
    /// Write every packet the interface sends and receives to this pcap file.
    pub pcap: Option<PathBuf>,
    /// Seeded impairment of received packets, for experiments.
    pub impair: Option<ImpairSection>,
}

/// A UDP peer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's underlay endpoint.
    pub endpoint: Spanned<SocketAddr>,
    /// Overlay prefixes behind the peer.
    pub prefixes: Vec<Spanned<CidrValue>>,
}

/// Impairment settings (see `ImpairConfig`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairSection {
    /// Fraction of packets lost.
    #[serde(default)]
    pub loss: f64,
    /// Fraction duplicated.
    #[serde(default)]
    pub duplicate: f64,
    /// Fraction reordered.
    #[serde(default)]
    pub reorder: f64,
    /// Fraction with one bit flipped.
    #[serde(default)]
    pub corrupt: f64,
    /// Added delay in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

/// A static route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destination prefix.
    pub dest: CidrValue,
    /// Next hop on an attached prefix.
    pub via: IpAddr,
}

/// TCP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Receive buffer per connection, bytes.
    #[serde(default = "default_tcp_buffer")]
    pub rx_buffer: usize,
    /// Send buffer per connection, bytes.
    #[serde(default = "default_tcp_buffer")]
    pub tx_buffer: usize,
    /// Listen backlog when a listener gives none.
    #[serde(default = "default_backlog")]
    pub backlog: usize,
    /// The TCP recovery assist (default on).
    #[serde(default = "default_true")]
    pub recovery_assist: bool,
    /// Most TCP connections a stack holds at once (default: no limit).
    #[serde(default)]
    pub max_connections: Option<Spanned<usize>>,
    /// Most TCP connections with one remote address at once (default: no
    /// limit).
    #[serde(default)]
    pub max_connections_per_peer: Option<Spanned<usize>>,
    /// Milliseconds a connection stays idle before its buffers' memory goes
    /// back to the kernel (default 1000; see
    /// `StackConfig::tcp_buffer_idle_release`).
    #[serde(default)]
    pub buffer_idle_release_ms: Option<Spanned<u64>>,
}

/// Longest `tcp.buffer_idle_release_ms` accepted: an hour.
pub const MAX_BUFFER_IDLE_RELEASE_MS: u64 = 3_600_000;

fn default_tcp_buffer() -> usize {
    256 * 1024
}
fn default_backlog() -> usize {
    128
}
fn default_true() -> bool {
    true
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            rx_buffer: default_tcp_buffer(),
            tx_buffer: default_tcp_buffer(),
            backlog: default_backlog(),
            recovery_assist: true,
            max_connections: None,
            max_connections_per_peer: None,
            buffer_idle_release_ms: None,
        }
    }
}

/// Transport protocol of an echo or discard service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// The control socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the Unix socket `plebnet ctl` talks to.
    pub socket: PathBuf,
}

/// A [`Cidr`] read from a string such as `10.7.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrValue(pub Cidr);

impl<'de> Deserialize<'de> for CidrValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(CidrValue).map_err(serde::de::Error::custom)
    }
}

/// A MAC address read from `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacValue(pub [u8; 6]);

impl<'de> Deserialize<'de> for MacValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("`{s}` is not a MAC address such as 02:00:00:00:00:01"));
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (b, p) in mac.iter_mut().zip(parts) {
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if mac[0] & 1 == 1 {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is a multicast address; an interface needs a unicast one"
            )));
        }
        Ok(MacValue(mac))
    }
}

impl InterfaceConfig {
    /// The interface's name (`if<index>` when the file gives none).
    pub fn name_or(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("if{index}"))
    }

    /// The MTU, with the kind's default.
    pub fn effective_mtu(&self) -> usize {
        match (&self.mtu, self.kind) {
            (Some(m), _) => *m.get_ref(),
            (None, InterfaceKind::Udp) => UdpNicConfig::default().mtu,
            (None, _) => 1500,
        }
    }
}

/// Finds positions and builds errors for one file.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn error(&self, span: Option<Range<usize>>, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (position, source_line) = match span {
            Some(span) => {
                let start = span.start.min(self.text.len());
                let before = &self.text[..start];
                let line = before.matches('\n').count() + 1;
                let line_start = before.rfind('\n').map_or(0, |i| i + 1);
                let col = self.text[line_start..start].chars().count() + 1;
                let text = self.text[line_start..].lines().next().unwrap_or("").to_string();
                (Some((line, col)), Some(text))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.file.to_path_buf(),
            position,
            field: field.into(),
            message: message.into(),
            source_line,
        }
    }
}

impl NodeConfig {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            position: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
            source_line: None,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text`, naming `file` in errors.
    pub fn parse(file: &Path, text: &str) -> Result<NodeConfig, ConfigError> {
        let checker = Checker { file, text };
        let mut config: NodeConfig = toml::from_str(text).map_err(|e| {
            // toml says what is wrong and where; the key on that line is the field.
            let mut err = checker.error(e.span(), "", e.message().trim_end().to_string());
            if let Some(key) = err.source_line.as_deref().and_then(key_of_line) {
                err.field = key.to_string();
            }
            err
        })?;
        config.validate(&checker)?;
        Ok(config)
    }

    fn validate(&mut self, c: &Checker<'_>) -> Result<(), ConfigError> {
        if self.interfaces.is_empty() {
            return Err(c.error(None, "interface", "a node needs at least one [[interface]]"));
        }
        for (name, limit) in [
            ("tcp.max_connections", &self.tcp.max_connections),
            ("tcp.max_connections_per_peer", &self.tcp.max_connections_per_peer),
        ] {
            if let Some(limit) = limit
                && *limit.get_ref() == 0
            {
                return Err(c.error(
                    Some(limit.span()),
                    name,
                    "a limit of 0 would refuse every connection; leave it out for no limit",
                ));
            }
        }
        if let Some(ms) = &self.tcp.buffer_idle_release_ms
            && !(1..=MAX_BUFFER_IDLE_RELEASE_MS).contains(ms.get_ref())
        {
            return Err(c.error(
                Some(ms.span()),
                "tcp.buffer_idle_release_ms",
                format!("{} ms is outside 1 to {MAX_BUFFER_IDLE_RELEASE_MS} (an hour)", ms.get_ref()),
            ));
        }
        let mut all_prefixes: Vec<(String, Cidr, Range<usize>)> = Vec::new();
        for (i, iface) in self.interfaces.iter().enumerate() {
            let at = |f: &str| format!("interface[{i}].{f}");
            if iface.addresses.is_empty() {
                return Err(c.error(None, at("addresses"), "an interface needs at least one address"));
            }
            for a in &iface.addresses {
                let cidr = a.get_ref().0;
                if cidr.addr.is_loopback() || cidr.addr.is_unspecified() || cidr.addr.is_multicast() {
                    return Err(c.error(
                        Some(a.span()),
                        at("addresses"),
                        format!("{cidr} cannot be an interface address"),
                    ));
                }
                if let Some((other, o, _)) = all_prefixes.iter().find(|(_, o, _)| o.overlaps(&cidr)) {
                    return Err(c.error(
                        Some(a.span()),
                        at("addresses"),
                        format!("{cidr} overlaps {o} of {other}; each prefix belongs to one interface"),
                    ));
                }
                all_prefixes.push((iface.name_or(i), cidr, a.span()));
            }
            let mtu = iface.effective_mtu();
            if let Some(m) = &iface.mtu
                && !(MIN_MTU..=MAX_MTU).contains(&mtu)
            {
                return Err(c.error(Some(m.span()), at("mtu"), format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}")));
            }
            match iface.kind {
                InterfaceKind::Udp => {
                    if iface.listen.is_none() {
                        return Err(c.error(
                            None,
                            at("listen"),
                            "a udp interface needs `listen` (e.g. \"127.0.0.1:4001\")",
                        ));
                    }
                    if let Some(d) = &iface.device {
                        return Err(c.error(Some(d.span()), at("device"), "`device` is for tap and tun interfaces"));
                    }
                    self.validate_peers(c, i, iface)?;
                }
                InterfaceKind::Tap | InterfaceKind::Tun => {
                    if let Some(l) = &iface.listen {
                        return Err(c.error(Some(l.span()), at("listen"), "`listen` is for udp interfaces"));
                    }
                    if let Some(p) = iface.peers.first() {
                        return Err(c.error(Some(p.endpoint.span()), at("peer"), "peers are for udp interfaces"));
                    }
                    if let Some(d) = &iface.device
                        && d.get_ref().len() > 15
                    {
                        return Err(c.error(Some(d.span()), at("device"), "device names are at most 15 bytes"));
                    }
                    if iface.kind == InterfaceKind::Tun
                        && let Some(m) = &iface.mac
                    {
                        return Err(c.error(Some(m.span()), at("mac"), "`mac` is for tap interfaces"));
                    }
                }
            }
            if let Some(imp) = &iface.impair {
                for (name, v) in [
                    ("loss", imp.loss),
                    ("duplicate", imp.duplicate),
                    ("reorder", imp.reorder),
                    ("corrupt", imp.corrupt),
                ] {
                    if !(0.0..=1.0).contains(&v) {
                        return Err(c.error(
                            None,
                            at(&format!("impair.{name}")),
                            format!("{v} is not a fraction in 0..=1"),
                        ));
                    }
                }
            }
        }
        for (r, route) in self.routes.iter().enumerate() {
            let via = route.get_ref().via;
            if !all_prefixes.iter().any(|(_, p, _)| p.contains(via)) {
                return Err(c.error(
                    Some(route.span()),
                    format!("route[{r}].via"),
                    format!("{via} is on no interface's prefix"),
                ));
            }
        }
        self.identity = self.tls.as_ref().map(|t| tls::load_identity(c, t)).transpose()?;
        let tables = std::mem::take(&mut self.service_tables);
        self.services = service::check_services(self, c, &tables)?;
        Ok(())
    }

    fn validate_peers(&self, c: &Checker<'_>, i: usize, iface: &InterfaceConfig) -> Result<(), ConfigError> {
        let mut seen: Vec<(SocketAddr, Cidr)> = Vec::new();
        for (p, peer) in iface.peers.iter().enumerate() {
            let at = |f: &str| format!("interface[{i}].peer[{p}].{f}");
            let ep = *peer.endpoint.get_ref();
            if seen.iter().any(|(e, _)| *e == ep) {
                return Err(c.error(Some(peer.endpoint.span()), at("endpoint"), format!("{ep} is listed twice")));
            }
            if peer.prefixes.is_empty() {
                return Err(c.error(Some(peer.endpoint.span()), at("prefixes"), "a peer needs at least one prefix"));
            }
            for pre in &peer.prefixes {
                let cidr = pre.get_ref().0;
                if let Some((other, o)) = seen.iter().find(|(e, o)| *e != ep && o.overlaps(&cidr)) {
                    return Err(c.error(
                        Some(pre.span()),
                        at("prefixes"),
                        format!("{cidr} overlaps {o} of peer {other}"),
                    ));
                }
            }
            for pre in &peer.prefixes {
                seen.push((ep, pre.get_ref().0));
            }
        }
        Ok(())
    }

    /// True if `ip` is one of the interfaces' addresses.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.interfaces.iter().flat_map(|i| &i.addresses).any(|a| a.get_ref().0.addr == ip)
    }

    /// True if an interface prefix or a route reaches `ip`.
    pub fn reaches(&self, ip: IpAddr) -> bool {
        self.interfaces.iter().flat_map(|i| &i.addresses).any(|a| a.get_ref().0.contains(ip))
            || self.routes.iter().any(|r| r.get_ref().dest.0.contains(ip))
    }
}

/// The key of a `key = value` line.
fn key_of_line(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "_-.\"".contains(c));
    plain.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(Path::new("node.toml"), text)
    }

    const GOOD: &str = r#"
name = "a"

[[interface]]
kind = "udp"
addresses = ["10.77.0.1/24", "fd77::1/64"]
listen = "127.0.0.1:4001"

[[interface.peer]]
endpoint = "127.0.0.1:4002"
prefixes = ["10.77.0.2/32", "fd77::2/128"]

[[service]]
kind = "echo"
protocol = "tcp"
listen = "10.77.0.1:7"

[[service]]
kind = "forward"
listen = "127.0.0.1:8080"
connect = "10.77.0.2:80"

[control]
socket = "/tmp/a.sock"
"#;

    #[test]
    fn a_good_file_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.name, "a");
        assert_eq!(c.interfaces[0].peers[0].prefixes.len(), 2);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.interfaces[0].effective_mtu(), 1400);
        assert_eq!(c.tcp.rx_buffer, 256 * 1024);
    }

    #[test]
    fn missing_field_names_line_and_field() {
        let text = GOOD.replace("listen = \"127.0.0.1:4001\"\n", "");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "interface[0].listen");
        let text = GOOD.replace("kind = \"udp\"\n", "");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("node.toml:4:"), "{e}");
        assert!(e.contains("missing field `kind`"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let text = GOOD.replace("listen = \"127.0.0.1:4001\"", "listen = \"127.0.0.1:4001\"\nmtu = \"big\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(8), "{e}");
        assert_eq!(e.field, "mtu");
        assert!(e.to_string().contains("mtu = \"big\""), "{e}");
    }

    #[test]
    fn overlapping_peer_prefix_is_refused() {
        let text = GOOD.replace(
            "[[service]]\nkind = \"echo\"",
            "[[interface.peer]]\nendpoint = \"127.0.0.1:4003\"\nprefixes = [\"10.77.0.0/30\"]\n\n[[service]]\nkind = \"echo\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "interface[0].peer[1].prefixes");
        assert_eq!(e.position.map(|p| p.0), Some(15), "{e}");
        assert!(e.message.contains("overlaps 10.77.0.2/32"), "{e}");
    }

    #[test]
    fn service_mistakes_name_the_line_of_their_key() {
        for (from, to, line, field, needle) in [
            ("10.77.0.1:7\"", "10.99.0.1:7\"", 16, "service[0].listen", "10.99.0.1 is not an address of this node"),
            ("10.77.0.1:7\"", "10.77.0.1:x\"", 16, "service[0].listen", "`10.77.0.1:x` is not an ip:port"),
            ("10.77.0.2:80", "192.168.1.1:80", 21, "service[1].connect", "no interface or route reaches"),
            ("10.77.0.2:80\"", "10.77.0.2:80\"\npin = \"x\"", 22, "service[1].pin", "`pin` is for multipath forwards"),
            ("protocol = \"tcp\"", "protocol = \"sctp\"", 15, "protocol", "unknown variant `sctp`"),
            (
                "kind = \"forward\"",
                "kind = \"forward\"\nprotocol = \"tcp\"",
                20,
                "service[1].protocol",
                "`protocol` is for echo",
            ),
            ("kind = \"echo\"", "kind = \"echo\"\ncolour = 1", 15, "colour", "unknown field `colour`"),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let e = parse(&text).unwrap_err();
            assert_eq!((e.position.map(|p| p.0), e.field.as_str()), (Some(line), field), "{e}");
            assert!(e.message.contains(needle), "expected `{needle}` in: {e}");
        }
        let e = parse(&GOOD.replace("protocol = \"tcp\"\n", "")).unwrap_err();
        assert_eq!((e.position.map(|p| p.0), e.field.as_str()), (Some(13), "service[0].protocol"), "{e}");
    }

    #[test]
    fn other_mistakes_are_precise() {
        for (from, to, needle) in [
            ("10.77.0.1/24\"", "10.77.0.1/33\"", "prefix longer than the address"),
            ("kind = \"udp\"", "kind = \"wire\"", "unknown variant `wire`"),
            ("name = \"a\"", "name = \"a\"\ncolour = 3", "unknown field `colour`"),
            ("listen = \"10.77.0.1:7\"", "listen = \"10.99.0.1:7\"", "not an address of this node"),
            ("connect = \"10.77.0.2:80\"", "connect = \"192.168.1.1:80\"", "no interface or route reaches"),
            ("listen = \"127.0.0.1:4001\"", "listen = \"127.0.0.1:4001\"\nmtu = 100", "outside 1280"),
            ("name = \"a\"", "name = \"a\"\n[tcp]\nmax_connections = 0", "a limit of 0"),
            ("name = \"a\"", "name = \"a\"\n[tcp]\nbuffer_idle_release_ms = 0", "0 ms is outside 1 to 3600000"),
            ("name = \"a\"", "name = \"a\"\n[tcp]\nbuffer_idle_release_ms = \"1s\"", "invalid type"),
            (
                "name = \"a\"",
                "name = \"a\"\n[tcp]\nmax_connections_per_peer = -1",
                "max_connections_per_peer: invalid value",
            ),
        ] {
            let text = GOOD.replace(from, to);
            assert_ne!(text, GOOD, "{from}");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "expected `{needle}` in: {e}");
            assert!(e.starts_with("node.toml"), "{e}");
        }
    }
}
