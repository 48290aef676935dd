//! How a stack is set up: addresses, routes, buffer sizes, limits.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// An address with its prefix length, e.g. `10.7.0.1/24` or `fd00::1/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; panics if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        assert!(prefix <= max, "prefix /{prefix} is longer than a {max}-bit address");
        Self { addr, prefix }
    }

    /// True if `other` lies inside this prefix.
    pub fn contains(&self, other: IpAddr) -> bool {
        match (self.addr, other) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }

    /// True if the two prefixes share an address (one contains the other).
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4() && (self.contains(other.addr) || other.contains(self.addr))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a [`Cidr`] string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an address with a prefix length such as 10.7.0.1/24 or fd00::1/64: {reason}")]
pub struct CidrParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrParseError { input: s.to_string(), reason };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| err("missing `/prefix`"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("invalid address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("invalid prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err("prefix longer than the address"));
        }
        Ok(Cidr { addr, prefix })
    }
}

/// A static route: destinations in `dest` are sent towards `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix (`0.0.0.0/0` for a default route).
    pub dest: Cidr,
    /// The next hop; it must be on a directly attached prefix.
    pub via: IpAddr,
}

/// Everything a [`Stack`](crate::Stack) is built from, besides its NIC.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// A name for logs and counters.
    pub name: String,
    /// Overlay addresses of the interface (IPv4 and/or IPv6). 127.0.0.1/8
    /// and ::1/128 are added automatically.
    pub addresses: Vec<Cidr>,
    /// Static routes beyond the attached prefixes.
    pub routes: Vec<Route>,
    /// Receive buffer of each TCP socket, in bytes.
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP socket, in bytes.
    pub tcp_tx_buffer: usize,
    /// A TCP connection whose buffers have been empty, and which the
    /// application has neither read nor written, for this long (up to
    /// twice this long) gives its buffers' memory back to the kernel. The
    /// buffers keep their capacity; pages come back as data does.
    pub tcp_buffer_idle_release: Duration,
    /// Datagrams a UDP socket can hold in each direction.
    pub udp_packets: usize,
    /// Payload bytes a UDP socket can hold in each direction.
    pub udp_buffer: usize,
    /// Listen backlog used when a listener does not give one.
    pub default_backlog: usize,
    /// Listening sockets kept ready per listener (at most the backlog): how
    /// many SYNs one listener can take in a single burst.
    pub listen_pool: usize,
    /// How long `connect` waits when the caller gives no timeout.
    pub connect_timeout: Duration,
    /// A connection whose peer acknowledges nothing for this long while data
    /// is outstanding is aborted.
    pub tcp_user_timeout: Duration,
    /// How long a closed-but-unfinished connection may linger (FIN-WAIT-2,
    /// LAST-ACK...) before it is aborted.
    pub orphan_linger: Duration,
    /// Seed for initial sequence numbers and port choice; `None` draws one.
    pub seed: Option<u64>,
    /// Run the TCP recovery assist in front of smoltcp (NewReno partial
    /// ACKs, tail-loss probes, window-update repeats; see
    /// docs/architecture.md). On by default. Resending a lost FIN is not
    /// part of it: that is a correctness fix and always on.
    pub tcp_recovery_assist: bool,
    /// Challenge ACKs (RFC 5961) the stack may send per second, in total
    /// over all its connections; beyond it, in-window RSTs and SYNs on
    /// established connections are still dropped, but unanswered
    /// (`challenge_acks_suppressed`). Linux's default is 1000. 0 sends none.
    pub tcp_challenge_ack_limit: u32,
    /// Most TCP connections the stack holds at once (`None`: no limit).
    /// Every connection that holds a socket counts, whatever its state and
    /// direction: opening (SYN-SENT, SYN-RECEIVED), established, waiting to
    /// be accepted, and closing (FIN-WAIT, TIME-WAIT...) until its socket
    /// is gone; listening sockets do not. Beyond it, `connect` fails with
    /// `QuotaExceeded` and SYNs to listeners are dropped unanswered
    /// (`syn_dropped_conn_limit`), and a listener that dropped SYNs for it
    /// evicts its oldest half-open connections as under a SYN flood. A
    /// connection to the stack itself counts twice (both of its ends).
    pub max_connections: Option<usize>,
    /// Most TCP connections with one remote IP address at once (`None`: no
    /// limit), counted as for [`max_connections`](Self::max_connections).
    /// Beyond it, `connect` to that address fails with `QuotaExceeded` and
    /// SYNs from it are dropped unanswered (`syn_dropped_peer_limit`).
    pub max_connections_per_peer: Option<usize>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            name: "plebnet".to_string(),
            addresses: Vec::new(),
            routes: Vec::new(),
            tcp_rx_buffer: 256 * 1024,
            tcp_tx_buffer: 256 * 1024,
            tcp_buffer_idle_release: Duration::from_secs(1),
            udp_packets: 256,
            udp_buffer: 256 * 1024,
            default_backlog: 128,
            listen_pool: 16,
            connect_timeout: Duration::from_secs(75),
            tcp_user_timeout: Duration::from_secs(120),
            orphan_linger: Duration::from_secs(60),
            seed: None,
            tcp_recovery_assist: true,
            tcp_challenge_ack_limit: 1000,
            max_connections: None,
            max_connections_per_peer: None,
        }
    }
}

/// The capacities of one TCP socket's buffers, in bytes.
///
/// They are caps, not allocations: a buffer's memory is resident only where
/// data has been, and an idle connection gives it back (see
/// [`StackConfig::tcp_buffer_idle_release`]). The receive capacity also
/// sets the connection's window scale. Each must be at least
/// [`TcpBuffers::MIN`] and at most [`TcpBuffers::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpBuffers {
    /// Receive buffer: the most the peer may send ahead of the reader.
    pub rx: usize,
    /// Send buffer: the most the writer may queue ahead of the peer's
    /// acknowledgements.
    pub tx: usize,
}

impl TcpBuffers {
    /// The smallest buffer accepted.
    pub const MIN: usize = 1024;
    /// The largest buffer accepted (TCP's window scale reaches 1 GiB; this
    /// is far more than any path here needs).
    pub const MAX: usize = 64 << 20;

    /// Checks both sizes against [`MIN`](Self::MIN) and [`MAX`](Self::MAX).
    pub fn validate(self) -> Result<Self, String> {
        for (name, size) in [("receive", self.rx), ("send", self.tx)] {
            if !(Self::MIN..=Self::MAX).contains(&size) {
                return Err(format!(
                    "TCP {name} buffer of {size} bytes: must be between {} and {} bytes",
                    Self::MIN,
                    Self::MAX
                ));
            }
        }
        Ok(self)
    }
}

impl StackConfig {
    /// The stack's default TCP buffer sizes
    /// ([`tcp_rx_buffer`](Self::tcp_rx_buffer), [`tcp_tx_buffer`](Self::tcp_tx_buffer)).
    pub fn tcp_buffers(&self) -> TcpBuffers {
        TcpBuffers { rx: self.tcp_rx_buffer, tx: self.tcp_tx_buffer }
    }

    /// A configuration with one address, e.g. `StackConfig::with_address("10.7.0.1/24")`.
    /// Panics on a malformed address: meant for tests and examples.
    pub fn with_address(cidr: &str) -> Self {
        let mut c = Self::default();
        c.addresses.push(cidr.parse().unwrap_or_else(|e| panic!("{e}")));
        c
    }

    /// Adds an address (builder style). Panics on a malformed address.
    pub fn address(mut self, cidr: &str) -> Self {
        self.addresses.push(cidr.parse().unwrap_or_else(|e| panic!("{e}")));
        self
    }

    /// Sets the name (builder style).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_contains() {
        let c: Cidr = "10.7.0.1/24".parse().unwrap();
        assert!(c.contains("10.7.0.200".parse().unwrap()));
        assert!(!c.contains("10.7.1.1".parse().unwrap()));
        assert!(!c.contains("fd00::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        let v6: Cidr = "fd00::1/64".parse().unwrap();
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00::1/64");
    }

    #[test]
    fn bad_cidrs_say_why() {
        for bad in ["10.0.0.1", "10.0.0.1/33", "nonsense/8", "10.0.0.1/x", "fd00::/129"] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
