//! Connecting: a tunnel over several paths, or a single TLS path for a peer that does not speak the protocol.
//!
//! ```text
//!   paths, in order ─▶ the first that connects (TCP + TLS, ALPN plebnet-mp/1 offered) decides:
//!        peer selected the ALPN ─▶ Tunnel, that path its first leg; the other paths connect in the
//!                                  background, one thread each, and join as they come up
//!        peer did not            ─▶ SinglePath: that TLS session as a byte stream, one log line
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use std::{io, thread};

use plebnet::net::{NetStack, TcpStreamApi};
use rustls::{ClientConfig, ServerConfig};

use super::config::{LegOptions, TunnelConfig};
use super::driver::{MULTIPATH_ALPN, Tunnel, WeakTunnel};
use crate::tls::{TlsByteStream, TlsCellStream};

/// How long one path's TCP connection may take to establish.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`connect_multipath`] got.
pub enum MultipathConnection<S: TcpStreamApi> {
    /// The peer speaks the protocol: a tunnel whose first leg is up or linking; the other paths join it as
    /// they connect.
    Tunnel(Tunnel),
    /// The peer does not: the first path that connected, as a plain TLS byte stream.
    SinglePath(Box<TlsByteStream<S>>),
}

impl<S: TcpStreamApi> std::fmt::Debug for MultipathConnection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MultipathConnection::Tunnel(t) => f.debug_tuple("Tunnel").field(t).finish(),
            MultipathConnection::SinglePath(_) => f.write_str("SinglePath"),
        }
    }
}

/// `config` with the multipath ALPN offered.
pub fn multipath_client_config(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![MULTIPATH_ALPN.to_vec()];
    Arc::new(c)
}

/// `config` with the multipath ALPN accepted.
pub fn multipath_server_config(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![MULTIPATH_ALPN.to_vec()];
    Arc::new(c)
}

/// Connects to a peer over several paths (its addresses, one leg each) through one stack and builds a
/// tunnel; falls back to a single TLS byte stream when the peer does not select [`MULTIPATH_ALPN`]. See
/// [`connect_multipath_via`], which this calls with `net` for every path.
pub fn connect_multipath<N: NetStack>(
    net: &N,
    paths: &[SocketAddr],
    server_name: &str,
    tls: &ClientConfig,
    config: TunnelConfig,
) -> io::Result<MultipathConnection<N::TcpStream>> {
    let paths: Vec<(N, SocketAddr)> = paths.iter().map(|&addr| (net.clone(), addr)).collect();
    connect_multipath_via(&paths, server_name, tls, config)
}

/// Connects to a peer over several paths, each through its own stack (a node with one stack per NIC sends
/// each leg through the interface that reaches its address), and builds a tunnel; falls back to a single
/// TLS byte stream when the peer does not select [`MULTIPATH_ALPN`].
///
/// The paths are tried in order until one connects, and that one decides: if the peer did not select the
/// ALPN, it is returned as [`MultipathConnection::SinglePath`] and one line is logged; otherwise it is the
/// tunnel's first leg and the call returns at once. The other paths connect in the background, a thread
/// each, and join the tunnel as they come up ([`Tunnel::wait_legs`] waits for them); a path that fails is
/// logged and left out, and the tunnel works with the legs it has. Fails only if no path connects, with the
/// first path's error.
pub fn connect_multipath_via<N: NetStack>(
    paths: &[(N, SocketAddr)],
    server_name: &str,
    tls: &ClientConfig,
    config: TunnelConfig,
) -> io::Result<MultipathConnection<N::TcpStream>> {
    if paths.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "connect_multipath needs at least one path"));
    }
    let tls = multipath_client_config(tls);
    let handshake_timeout = config.handshake_timeout;
    let mut first_error = None;
    let mut rest = paths.iter();
    let (first, stream) = loop {
        let Some((net, addr)) = rest.next() else {
            return Err(first_error.expect("at least one path failed"));
        };
        match connect_path(net, *addr, server_name, &tls, handshake_timeout) {
            Ok(stream) => break (*addr, stream),
            Err(e) => {
                log::warn!("multipath: path {addr} left out: {e}");
                first_error.get_or_insert(e);
            }
        }
    };
    if stream.alpn_protocol() != Some(MULTIPATH_ALPN) {
        log::info!(
            "multipath: {first} does not speak {}; using a single path",
            String::from_utf8_lossy(MULTIPATH_ALPN)
        );
        return Ok(MultipathConnection::SinglePath(Box::new(stream.into_byte_stream())));
    }
    let tunnel = Tunnel::initiator(config)?;
    tunnel.add_leg(stream, LegOptions::default())?;
    for (net, addr) in rest {
        let (net, addr, name, tls, weak) =
            (net.clone(), *addr, server_name.to_owned(), tls.clone(), tunnel.downgrade());
        let spawned = thread::Builder::new()
            .name("plebnet-mp-connect".into())
            .spawn(move || add_path(&weak, &net, addr, &name, tls, handshake_timeout));
        if let Err(e) = spawned {
            log::warn!("multipath: path {addr} left out: cannot start its thread: {e}");
        }
    }
    Ok(MultipathConnection::Tunnel(tunnel))
}

/// One path's TCP connection and TLS session; a peer that accepts TCP but does not finish the TLS handshake
/// within `handshake_timeout` fails it.
fn connect_path<N: NetStack>(
    net: &N,
    addr: SocketAddr,
    server_name: &str,
    tls: &Arc<ClientConfig>,
    handshake_timeout: Duration,
) -> io::Result<TlsCellStream<N::TcpStream>> {
    let tcp = net.tcp_connect_timeout(addr, CONNECT_TIMEOUT)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(handshake_timeout))?;
    let stream = TlsCellStream::connect(tcp, server_name, tls.clone())?;
    stream.get_ref().set_read_timeout(None)?;
    Ok(stream)
}

/// Background: connects one more path and adds it as a leg, unless the tunnel is gone by then.
fn add_path<N: NetStack>(
    tunnel: &WeakTunnel,
    net: &N,
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<ClientConfig>,
    handshake_timeout: Duration,
) {
    let added = connect_path(net, addr, server_name, &tls, handshake_timeout).and_then(|stream| {
        if stream.alpn_protocol() != Some(MULTIPATH_ALPN) {
            return Err(io::Error::other(format!(
                "this address does not speak {}, the first one did",
                String::from_utf8_lossy(MULTIPATH_ALPN)
            )));
        }
        match tunnel.upgrade() {
            Some(t) if t.closed().is_none() => t.add_leg(stream, LegOptions::default()).map(drop),
            _ => Ok(()),
        }
    });
    if let Err(e) = added {
        log::warn!("multipath: path {addr} left out: {e}");
    }
}

/// Parses the multipath address form `mp@ADDR1,ADDR2,...:PORT` (IPv6 addresses in brackets), HAProxy's
/// `mptcp@` idea; a plain `ADDR:PORT` is one path. The same parser reads node configurations
/// ([`plebnet::config::parse_multipath_address`]).
pub fn parse_multipath_address(text: &str) -> Result<Vec<SocketAddr>, String> {
    plebnet::config::parse_multipath_address(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_addresses_parse() {
        assert_eq!(
            parse_multipath_address("mp@10.7.1.2,10.7.2.2:9000").unwrap(),
            vec!["10.7.1.2:9000".parse().unwrap(), "10.7.2.2:9000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            parse_multipath_address("mp@[fd00::1],[fd00::2]:80").unwrap(),
            vec!["[fd00::1]:80".parse().unwrap(), "[fd00::2]:80".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(parse_multipath_address("10.0.0.1:5").unwrap().len(), 1);
        assert!(parse_multipath_address("mp@10.0.0.1").unwrap_err().contains("PORT"));
        assert!(parse_multipath_address("mp@10.0.0.x:5").unwrap_err().contains("bad address"));
    }
}
