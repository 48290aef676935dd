//! The services a node runs from its configuration: echo and discard (TCP
//! and UDP) on overlay addresses, and port forwards in both directions
//! between the kernel and the overlay.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use super::splice::splice;
use crate::net::{NetStack, TcpListenerApi, TcpStreamApi, UdpSocketApi};

/// Live counts of one service, for stats.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Connections (or datagrams, for UDP) accepted.
    pub accepted: AtomicU64,
    /// Connections that ended with an error.
    pub failed: AtomicU64,
    /// Bytes carried or answered.
    pub bytes: AtomicU64,
}

impl ServiceCounters {
    fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

pub(super) fn spawn_named(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new().name(name).spawn(f).map(drop)
}

/// Runs `handle` for every connection accepted on `listener`, each on its
/// own thread.
pub(super) fn serve_tcp<L, F>(name: &str, listener: L, counters: Arc<ServiceCounters>, handle: F) -> io::Result<()>
where
    L: TcpListenerApi,
    F: Fn(L::Stream) -> io::Result<u64> + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let thread_name = format!("plebnet-{name}");
    spawn_named(thread_name.clone(), move || {
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("{thread_name}: accept failed: {e}");
                    continue;
                }
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let (handle, counters) = (handle.clone(), counters.clone());
            let spawned = spawn_named(thread_name.clone(), move || match handle(stream) {
                Ok(n) => counters.add_bytes(n),
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    log::debug!("connection ended with an error: {e}");
                }
            });
            if let Err(e) = spawned {
                log::warn!("cannot start a connection thread: {e}");
            }
        }
    })
}

/// TCP echo: everything read is written back; EOF is passed on.
pub fn tcp_echo<S: NetStack>(stack: &S, listen: SocketAddr, counters: Arc<ServiceCounters>) -> io::Result<SocketAddr> {
    let listener = stack.tcp_listen(listen)?;
    let bound = listener.local_addr()?;
    serve_tcp("echo", listener, counters, |mut stream| {
        let mut writer = stream.try_clone()?;
        let n = io::copy(&mut stream, &mut writer)?;
        stream.shutdown(Shutdown::Write)?;
        Ok(n)
    })?;
    Ok(bound)
}

/// TCP discard: everything read is dropped; the connection closes at EOF.
pub fn tcp_discard<S: NetStack>(
    stack: &S,
    listen: SocketAddr,
    counters: Arc<ServiceCounters>,
) -> io::Result<SocketAddr> {
    let listener = stack.tcp_listen(listen)?;
    let bound = listener.local_addr()?;
    serve_tcp("discard", listener, counters, |mut stream| {
        let n = io::copy(&mut stream, &mut io::sink())?;
        stream.shutdown(Shutdown::Write)?;
        Ok(n)
    })?;
    Ok(bound)
}

/// UDP echo (`reply`) or discard (`!reply`).
pub fn udp_service<S: NetStack>(
    stack: &S,
    listen: SocketAddr,
    reply: bool,
    counters: Arc<ServiceCounters>,
) -> io::Result<SocketAddr> {
    let socket = stack.udp_bind(listen)?;
    let bound = socket.local_addr()?;
    let name = if reply { "udp-echo" } else { "udp-discard" };
    spawn_named(format!("plebnet-{name}"), move || {
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    counters.add_bytes(n as u64);
                    if reply && let Err(e) = socket.send_to(&buf[..n], from) {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        log::debug!("{name}: reply to {from} failed: {e}");
                    }
                }
                Err(e) => log::warn!("{name}: receive failed: {e}"),
            }
        }
    })?;
    Ok(bound)
}

/// A port forward: connections accepted by `listen_stack` at `listen` are
/// carried to `connect` through `connect_stack`. Kernel → overlay is a
/// `forward`, overlay → kernel a `reverse`.
pub fn relay<L: NetStack, C: NetStack>(
    listen_stack: &L,
    listen: SocketAddr,
    connect_stack: C,
    connect: SocketAddr,
    counters: Arc<ServiceCounters>,
) -> io::Result<SocketAddr> {
    let listener = listen_stack.tcp_listen(listen)?;
    let bound = listener.local_addr()?;
    serve_tcp("relay", listener, counters, move |inbound| {
        let outbound = match connect_stack.tcp_connect(connect) {
            Ok(s) => s,
            Err(e) => {
                // The far side is unreachable: reset the caller rather than
                // pretending the connection worked.
                let _ = inbound.shutdown(Shutdown::Both);
                return Err(e);
            }
        };
        let _ = outbound.set_nodelay(true);
        let _ = inbound.set_nodelay(true);
        let done = splice(inbound, outbound)?;
        Ok(done.a_to_b + done.b_to_a)
    })?;
    Ok(bound)
}
