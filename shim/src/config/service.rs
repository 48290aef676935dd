//! The `[[service]]` tables: what each kind takes, the multipath address form `mp@A,B:PORT`, and peer pins.
//!
//! A service table is read with every key's position (a plain struct of `Spanned` values), then turned into
//! a [`ServiceConfig`] here, so that a bad value is reported on its own line and key — serde's tagged enums
//! would only know the position of the whole `[[service]]` array.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, ConfigError, NodeConfig, Protocol};

/// A service the node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceConfig {
    /// Sends back what it receives, on an overlay address.
    Echo {
        /// tcp or udp.
        protocol: Protocol,
        /// Overlay address and port.
        listen: SocketAddr,
    },
    /// Reads and forgets, on an overlay address.
    Discard {
        /// tcp or udp.
        protocol: Protocol,
        /// Overlay address and port.
        listen: SocketAddr,
    },
    /// A kernel TCP listener whose connections are carried to an overlay
    /// address.
    Forward {
        /// Kernel address, e.g. `127.0.0.1:8080`.
        listen: SocketAddr,
        /// Overlay address.
        connect: SocketAddr,
    },
    /// An overlay TCP listener whose connections are carried to a kernel
    /// address.
    Reverse {
        /// Overlay address.
        listen: SocketAddr,
        /// Kernel address, e.g. `127.0.0.1:8000`.
        connect: SocketAddr,
    },
    /// `kind = "forward"` with `connect = "mp@A,B:PORT"`: a kernel TCP
    /// listener whose connections are each carried over a multipath tunnel
    /// with one leg per address (each through the interface that reaches
    /// it), or over one TLS path if the peer does not speak the protocol.
    MultipathForward {
        /// Kernel address, e.g. `127.0.0.1:8080`.
        listen: SocketAddr,
        /// The responder's overlay addresses, one leg each, all on one port.
        paths: Vec<SocketAddr>,
        /// The responder's certificate or public key.
        pin: PeerPin,
        /// How the tunnel spreads data over its legs.
        scheduler: MultipathScheduler,
    },
    /// `kind = "reverse"` with `listen = "mp@A,B:PORT"`: a multipath
    /// responder on those overlay addresses (possibly of different
    /// interfaces) that joins legs into tunnels and carries each tunnel
    /// stream to a kernel address. It presents the node's `[tls]`
    /// certificate.
    MultipathReverse {
        /// The overlay addresses it listens on, all on one port.
        paths: Vec<SocketAddr>,
        /// Kernel address, e.g. `127.0.0.1:8000`.
        connect: SocketAddr,
    },
}

/// The SHA-256 fingerprint a multipath forward expects of its peer's
/// certificate: `spki-sha256:<64 hex digits>` (its public key, surviving
/// reissue) or `cert-sha256:<64 hex digits>` (the whole certificate).
/// Colons between hex pairs, as `openssl x509 -fingerprint` prints them,
/// are accepted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerPin {
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
    SpkiSha256([u8; 32]),
    /// SHA-256 of the whole certificate (DER).
    CertSha256([u8; 32]),
}

impl FromStr for PeerPin {
    type Err = String;

    fn from_str(text: &str) -> Result<PeerPin, String> {
        let bad = || {
            format!(
                "`{text}` is not a pin: write spki-sha256:<64 hex digits> (SHA-256 of the peer's public key) or \
                 cert-sha256:<64 hex digits> (of its whole certificate); `plebnet node --check` prints a node's own"
            )
        };
        let (kind, hex) = text.split_once(':').ok_or_else(bad)?;
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad());
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        match kind.to_ascii_lowercase().as_str() {
            "spki-sha256" => Ok(PeerPin::SpkiSha256(digest)),
            "cert-sha256" => Ok(PeerPin::CertSha256(digest)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for PeerPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, digest) = match self {
            PeerPin::SpkiSha256(d) => ("spki-sha256", d),
            PeerPin::CertSha256(d) => ("cert-sha256", d),
        };
        write!(f, "{kind}:")?;
        digest.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for PeerPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerPin({self})")
    }
}

/// How a multipath tunnel spreads data over its legs (the `scheduler`
/// key of a multipath forward; plebnet-transport's `Scheduler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultipathScheduler {
    /// The live leg with the lowest RTT only: lowest latency, no aggregation.
    MinRtt,
    /// The lowest-RTT leg with room, spilling onto the others: aggregates
    /// bandwidth (the default).
    #[default]
    LowRtt,
    /// Legs take turns.
    Wrr,
    /// Every cell on every leg; the first copy to arrive wins.
    Redundant,
}

impl fmt::Display for MultipathScheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MultipathScheduler::MinRtt => "minrtt",
            MultipathScheduler::LowRtt => "lowrtt",
            MultipathScheduler::Wrr => "wrr",
            MultipathScheduler::Redundant => "redundant",
        })
    }
}

/// Parses the multipath address form `mp@ADDR1,ADDR2,...:PORT` (IPv6
/// addresses in brackets), HAProxy's `mptcp@` idea; a plain `ADDR:PORT` is
/// one path. An address listed twice is an error.
pub fn parse_multipath_address(text: &str) -> Result<Vec<SocketAddr>, String> {
    let Some(list) = text.strip_prefix("mp@") else {
        return text.parse::<SocketAddr>().map(|a| vec![a]).map_err(|e| format!("{text:?}: {e}"));
    };
    let (hosts, port) =
        list.rsplit_once(':').ok_or_else(|| format!("{text:?}: missing :PORT (write mp@ADDR1,ADDR2:PORT)"))?;
    let port: u16 = port.parse().map_err(|_| format!("{text:?}: bad port {port:?}"))?;
    let mut paths: Vec<SocketAddr> = Vec::new();
    for h in hosts.split(',') {
        let h = h.trim();
        let bare = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
        let ip: IpAddr = bare.parse().map_err(|_| format!("{text:?}: bad address {h:?}"))?;
        if paths.iter().any(|p| p.ip() == ip) {
            return Err(format!("{text:?}: {ip} is listed twice"));
        }
        paths.push(SocketAddr::new(ip, port));
    }
    Ok(paths)
}

/// The kinds of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum ServiceKind {
    Echo,
    Discard,
    Forward,
    Reverse,
}

/// A `[[service]]` table as written, every value with its position.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceTable {
    kind: Spanned<ServiceKind>,
    protocol: Option<Spanned<Protocol>>,
    listen: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    pin: Option<Spanned<String>>,
    scheduler: Option<Spanned<MultipathScheduler>>,
}

/// Turns the service tables into services and checks them against the
/// node: overlay listens on its own addresses, overlay destinations
/// reachable, no address used twice.
pub(super) fn check_services(
    config: &NodeConfig,
    c: &Checker<'_>,
    tables: &[Spanned<ServiceTable>],
) -> Result<Vec<Spanned<ServiceConfig>>, ConfigError> {
    let mut services = Vec::new();
    let mut listens: Vec<(SocketAddr, Protocol)> = Vec::new();
    for (s, table) in tables.iter().enumerate() {
        let t = Table { c, s, span: table.span(), table: table.get_ref() };
        let svc = t.service(config.identity.is_some())?;
        let listen_key = t.table.listen.as_ref().map(|l| l.span());
        let (overlay_listens, kernel_listen, overlay_connects, protocol) = match &svc {
            ServiceConfig::Echo { protocol, listen } | ServiceConfig::Discard { protocol, listen } => {
                (vec![*listen], None, vec![], *protocol)
            }
            ServiceConfig::Forward { listen, connect } => (vec![], Some(*listen), vec![*connect], Protocol::Tcp),
            ServiceConfig::MultipathForward { listen, paths, .. } => {
                (vec![], Some(*listen), paths.clone(), Protocol::Tcp)
            }
            ServiceConfig::Reverse { listen, .. } => (vec![*listen], None, vec![], Protocol::Tcp),
            ServiceConfig::MultipathReverse { paths, .. } => (paths.clone(), None, vec![], Protocol::Tcp),
        };
        let multipath = matches!(svc, ServiceConfig::MultipathReverse { .. });
        for l in &overlay_listens {
            let ip = l.ip();
            if multipath && ip.is_unspecified() {
                return Err(t.error_at(
                    listen_key.clone(),
                    "listen",
                    format!("{ip} cannot be a multipath address: each leg listens on one of this node's own addresses"),
                ));
            }
            if !ip.is_unspecified() && !config.owns(ip) {
                return Err(t.error_at(
                    listen_key.clone(),
                    "listen",
                    format!("{ip} is not an address of this node's interfaces"),
                ));
            }
        }
        let connect_key = t.table.connect.as_ref().map(|k| k.span());
        if let Some(dst) = overlay_connects.iter().find(|d| !config.reaches(d.ip())) {
            return Err(t.error_at(connect_key, "connect", format!("no interface or route reaches {}", dst.ip())));
        }
        for l in overlay_listens.into_iter().chain(kernel_listen) {
            if listens.contains(&(l, protocol)) {
                return Err(t.error_at(listen_key, "listen", format!("{l} is used by another service")));
            }
            listens.push((l, protocol));
        }
        services.push(Spanned::new(table.span(), svc));
    }
    Ok(services)
}

/// One service table being converted, for errors with its position.
struct Table<'a> {
    c: &'a Checker<'a>,
    s: usize,
    span: Range<usize>,
    table: &'a ServiceTable,
}

impl<'a> Table<'a> {
    /// An error on `key`'s value, or on the table if the key is absent.
    fn error_at(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> ConfigError {
        self.c.error(Some(span.unwrap_or_else(|| self.span.clone())), format!("service[{}].{key}", self.s), message)
    }

    /// The value of a required string key.
    fn required(
        &self,
        value: &'a Option<Spanned<String>>,
        key: &str,
        hint: &str,
    ) -> Result<&'a Spanned<String>, ConfigError> {
        value.as_ref().ok_or_else(|| self.error_at(None, key, format!("this service needs `{key}` ({hint})")))
    }

    /// Refuses a key this kind of service does not take.
    fn refuse<T>(&self, value: &Option<Spanned<T>>, key: &str, why: &str) -> Result<(), ConfigError> {
        match value {
            Some(v) => Err(self.error_at(Some(v.span()), key, why)),
            None => Ok(()),
        }
    }

    /// One `ip:port` address.
    fn socket(&self, value: &Spanned<String>, key: &str, example: &str) -> Result<SocketAddr, ConfigError> {
        let text = value.get_ref();
        if text.starts_with("mp@") {
            return Err(self.error_at(
                Some(value.span()),
                key,
                "the mp@ form is for a forward's `connect` and a reverse's `listen`",
            ));
        }
        text.parse().map_err(|_| {
            self.error_at(Some(value.span()), key, format!("`{text}` is not an ip:port address such as {example}"))
        })
    }

    /// The addresses of an `mp@` value.
    fn paths(&self, value: &Spanned<String>, key: &str) -> Result<Vec<SocketAddr>, ConfigError> {
        parse_multipath_address(value.get_ref()).map_err(|e| self.error_at(Some(value.span()), key, e))
    }

    fn service(&self, has_identity: bool) -> Result<ServiceConfig, ConfigError> {
        let t = self.table;
        let kind = *t.kind.get_ref();
        let multipath_only = "is for multipath forwards (connect = \"mp@ADDR1,ADDR2:PORT\")";
        if !matches!(kind, ServiceKind::Echo | ServiceKind::Discard) {
            self.refuse(&t.protocol, "protocol", "`protocol` is for echo and discard services")?;
        }
        let is_mp = |v: &Option<Spanned<String>>| v.as_ref().is_some_and(|v| v.get_ref().starts_with("mp@"));
        if kind != ServiceKind::Forward || !is_mp(&t.connect) {
            self.refuse(&t.pin, "pin", &format!("`pin` {multipath_only}"))?;
            self.refuse(&t.scheduler, "scheduler", &format!("`scheduler` {multipath_only}"))?;
        }
        match kind {
            ServiceKind::Echo | ServiceKind::Discard => {
                self.refuse(&t.connect, "connect", "echo and discard services take no `connect`")?;
                let protocol = t.protocol.as_ref().ok_or_else(|| {
                    self.error_at(None, "protocol", "this service needs `protocol` (\"tcp\" or \"udp\")")
                })?;
                let protocol = *protocol.get_ref();
                let listen =
                    self.socket(self.required(&t.listen, "listen", "an overlay ip:port")?, "listen", "10.77.0.1:7")?;
                Ok(if kind == ServiceKind::Echo {
                    ServiceConfig::Echo { protocol, listen }
                } else {
                    ServiceConfig::Discard { protocol, listen }
                })
            }
            ServiceKind::Forward => {
                let listen = self.required(&t.listen, "listen", "a kernel ip:port such as 127.0.0.1:8080")?;
                let listen = self.socket(listen, "listen", "127.0.0.1:8080")?;
                let connect = self.required(&t.connect, "connect", "an overlay ip:port, or mp@ADDR1,ADDR2:PORT")?;
                if !is_mp(&t.connect) {
                    return Ok(ServiceConfig::Forward {
                        listen,
                        connect: self.socket(connect, "connect", "10.77.0.2:80")?,
                    });
                }
                let paths = self.paths(connect, "connect")?;
                let pin = t.pin.as_ref().ok_or_else(|| {
                    self.error_at(
                        None,
                        "pin",
                        "a multipath forward needs `pin`, the responder's spki-sha256:<hex> or cert-sha256:<hex> \
                         (`plebnet node --check` on the responder prints it)",
                    )
                })?;
                let pin = pin.get_ref().parse().map_err(|e| self.error_at(Some(pin.span()), "pin", e))?;
                let scheduler = t.scheduler.as_ref().map(|s| *s.get_ref()).unwrap_or_default();
                Ok(ServiceConfig::MultipathForward { listen, paths, pin, scheduler })
            }
            ServiceKind::Reverse => {
                let listen = self.required(&t.listen, "listen", "an overlay ip:port, or mp@ADDR1,ADDR2:PORT")?;
                let connect = self.required(&t.connect, "connect", "a kernel ip:port such as 127.0.0.1:8000")?;
                let connect = self.socket(connect, "connect", "127.0.0.1:8000")?;
                if !is_mp(&t.listen) {
                    return Ok(ServiceConfig::Reverse {
                        listen: self.socket(listen, "listen", "10.77.0.2:80")?,
                        connect,
                    });
                }
                let paths = self.paths(listen, "listen")?;
                if paths[0].port() == 0 {
                    return Err(self.error_at(
                        Some(listen.span()),
                        "listen",
                        "a multipath responder needs a fixed port, the same on every address",
                    ));
                }
                if !has_identity {
                    return Err(self.error_at(
                        Some(listen.span()),
                        "listen",
                        "a multipath reverse presents the node's certificate: add a [tls] section with \
                         `certificate` and `private_key`",
                    ));
                }
                Ok(ServiceConfig::MultipathReverse { paths, connect })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_addresses_parse() {
        let two: Vec<SocketAddr> = vec!["10.7.1.2:9000".parse().unwrap(), "10.7.2.2:9000".parse().unwrap()];
        assert_eq!(parse_multipath_address("mp@10.7.1.2,10.7.2.2:9000").unwrap(), two);
        assert_eq!(parse_multipath_address("mp@10.7.1.2, 10.7.2.2:9000").unwrap(), two);
        let v6: Vec<SocketAddr> = vec!["[fd00::1]:80".parse().unwrap(), "10.0.0.1:80".parse().unwrap()];
        assert_eq!(parse_multipath_address("mp@[fd00::1],10.0.0.1:80").unwrap(), v6);
        for (bad, needle) in [
            ("mp@10.0.0.1", "missing :PORT"),
            ("mp@10.0.0.1:x", "bad port"),
            ("mp@10.0.0.1:70000", "bad port"),
            ("mp@10.0.0.x:5", "bad address \"10.0.0.x\""),
            ("mp@10.0.0.1,:5", "bad address \"\""),
            ("mp@:5", "bad address"),
            ("mp@10.0.0.1,10.0.0.1:5", "listed twice"),
            ("mp@[fd00::1:5", "bad address"),
        ] {
            let e = parse_multipath_address(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn pins_parse_and_print() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let pin: PeerPin = format!("spki-sha256:{hex}").parse().unwrap();
        assert_eq!(pin.to_string(), format!("spki-sha256:{hex}"));
        let colons: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).to_uppercase()).collect();
        let cert: PeerPin = format!("cert-sha256:{}", colons.join(":")).parse().unwrap();
        assert_eq!(cert.to_string(), format!("cert-sha256:{hex}"));
        for bad in [hex.to_string(), format!("md5:{hex}"), format!("spki-sha256:{}", &hex[1..]), "spki-sha256:é".into()]
        {
            assert!(bad.parse::<PeerPin>().unwrap_err().contains("is not a pin"), "{bad}");
        }
    }
}
