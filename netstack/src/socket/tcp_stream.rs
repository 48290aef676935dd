//! `TcpStream`: a connected TCP socket with std::net semantics.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stack::shards::Handle;
use smoltcp::socket::tcp::{self, RecvError};

use super::{SocketOptions, Wait, block_on};
use crate::stack::core::{Core, to_std};
use crate::stack::ingress::FourTuple;
use crate::stack::orphans::Orphan;
use crate::wake::SocketSignal;
use crate::{Stack, TcpBuffers};

/// A TCP connection on a plebnet stack. Behaves like [`std::net::TcpStream`]:
/// blocking by default, `Read`/`Write` on `&TcpStream`, clones share the
/// connection and its options.
#[derive(Debug, Clone)]
pub struct TcpStream {
    inner: Arc<StreamInner>,
}

#[derive(Debug)]
struct StreamInner {
    stack: Stack,
    handle: Handle,
    signal: Arc<SocketSignal>,
    options: SocketOptions,
    read_shut: AtomicBool,
    /// Ephemeral port to release when the connection is gone (active opens).
    port: Option<u16>,
    /// The 4-tuple registered with the SYN guard (passive opens).
    passive: Option<FourTuple>,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        let mut core = self.stack.shared().lock();
        let socket = core.tcp(self.handle);
        if socket.recv_queue() > 0 {
            // Closing with unread data resets the connection, as Linux does,
            // so the peer learns that not everything it sent was consumed.
            socket.abort();
        } else {
            socket.close();
        }
        let since = core.now;
        core.orphans.push(Orphan::new(self.handle, self.port, self.passive, since));
        drop(core);
        self.stack.wake_driver();
    }
}

fn refused(addr: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("connection to {addr} refused (the peer answered with RST)"),
    )
}

impl TcpStream {
    /// Opens a connection to `addr`, waiting up to the stack's
    /// `connect_timeout`.
    pub fn connect(stack: &Stack, addr: SocketAddr) -> io::Result<TcpStream> {
        Self::connect_inner(stack, addr, None, None)
    }

    /// Opens a connection to `addr`, waiting at most `timeout`.
    pub fn connect_timeout(stack: &Stack, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        if timeout.is_zero() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot set a 0 duration timeout"));
        }
        Self::connect_inner(stack, addr, Some(timeout), None)
    }

    /// Opens a connection to `addr` whose buffers have their own sizes
    /// instead of the stack's ([`StackConfig::tcp_rx_buffer`] and
    /// [`tcp_tx_buffer`]), waiting at most `timeout` (`None`: the stack's
    /// `connect_timeout`). Sizes outside [`TcpBuffers::MIN`]..=[`TcpBuffers::MAX`]
    /// are refused with `InvalidInput`.
    ///
    /// [`StackConfig::tcp_rx_buffer`]: crate::StackConfig::tcp_rx_buffer
    /// [`tcp_tx_buffer`]: crate::StackConfig::tcp_tx_buffer
    pub fn connect_with_buffers(
        stack: &Stack,
        addr: SocketAddr,
        buffers: TcpBuffers,
        timeout: Option<Duration>,
    ) -> io::Result<TcpStream> {
        let buffers = buffers.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if timeout.is_some_and(|t| t.is_zero()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot set a 0 duration timeout"));
        }
        Self::connect_inner(stack, addr, timeout, Some(buffers))
    }

    fn connect_inner(
        stack: &Stack,
        addr: SocketAddr,
        timeout: Option<Duration>,
        buffers: Option<TcpBuffers>,
    ) -> io::Result<TcpStream> {
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot connect to {addr}: not a unicast address and port"),
            ));
        }
        let (stream, timeout) = {
            let mut core = stack.shared().lock();
            if !addr.ip().is_loopback() && !core.has_family(addr.ip()) {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(io::Error::new(
                    io::ErrorKind::NetworkUnreachable,
                    format!(
                        "cannot reach {addr}: stack `{}` has no {family} address; add one to its configuration",
                        core.config.name
                    ),
                ));
            }
            if !core.can_reach(addr.ip()) {
                return Err(io::Error::new(
                    io::ErrorKind::NetworkUnreachable,
                    format!(
                        "no route to {addr} on stack `{}`: add an address on its prefix or a route",
                        core.config.name
                    ),
                ));
            }
            core.check_connect(addr)?;
            let port = core.alloc_ephemeral_port()?;
            let sizes = buffers.unwrap_or_else(|| core.config.tcp_buffers());
            let mut local = addr;
            let added = core.add_tcp_socket(sizes, |socket, cx| {
                socket.connect(cx, (smoltcp::wire::IpAddress::from(addr.ip()), addr.port()), port).map_err(|e| {
                    io::Error::new(io::ErrorKind::NetworkUnreachable, format!("cannot connect to {addr}: {e}"))
                })?;
                local = socket.local_endpoint().map_or(addr, |e| to_std(e.addr, e.port));
                Ok(())
            });
            let handle = match added {
                Ok(handle) => handle,
                Err(e) => {
                    core.ports.release_tcp_conn(port);
                    return Err(e);
                }
            };
            core.index_active(handle, addr.ip());
            let timeout = timeout.unwrap_or(core.config.connect_timeout);
            (TcpStream::from_parts(stack.clone(), handle, Some(port), None, local, addr), timeout)
        };
        stack.wake_driver();
        let inner = &stream.inner;
        let wait = Wait {
            nonblocking: false,
            deadline: Some(Instant::now() + timeout),
            on_timeout: || io::Error::new(io::ErrorKind::TimedOut, "connection timed out: no answer from the peer"),
        };
        block_on(stack, &inner.signal.tx, wait, |core| {
            let socket = core.tcp(inner.handle);
            match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    socket.register_send_waker(&inner.signal.tx_waker);
                    None
                }
                tcp::State::Closed => Some(Err(refused(addr))),
                _ => Some(Ok(())),
            }
        })
        .map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                io::Error::new(io::ErrorKind::TimedOut, format!("connection to {addr} timed out after {timeout:?}"))
            } else {
                e
            }
        })?;
        Ok(stream)
    }

    pub(crate) fn from_parts(
        stack: Stack,
        handle: Handle,
        port: Option<u16>,
        passive: Option<FourTuple>,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> TcpStream {
        TcpStream {
            inner: Arc::new(StreamInner {
                stack,
                handle,
                signal: SocketSignal::new(),
                options: SocketOptions::default(),
                read_shut: AtomicBool::new(false),
                port,
                passive,
                local,
                peer,
            }),
        }
    }

    /// The remote address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.peer)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.inner.local)
    }

    /// Closes the read half, the write half (sending FIN), or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let inner = &self.inner;
        if matches!(how, Shutdown::Read | Shutdown::Both) {
            inner.read_shut.store(true, Ordering::Release);
            inner.signal.rx.notify();
        }
        if matches!(how, Shutdown::Write | Shutdown::Both) {
            inner.stack.shared().lock().tcp(inner.handle).close();
            inner.stack.wake_driver();
        }
        Ok(())
    }

    /// Another handle to the same connection, as `std`'s `try_clone`.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        Ok(self.clone())
    }

    /// Disables (true) or enables (false) Nagle's algorithm.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.with_socket(|s| s.set_nagle_enabled(!nodelay));
        Ok(())
    }

    /// True if Nagle's algorithm is disabled.
    pub fn nodelay(&self) -> io::Result<bool> {
        Ok(self.with_socket(|s| !s.nagle_enabled()))
    }

    /// Switches non-blocking mode: operations that would wait return
    /// `WouldBlock` instead.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.options.set_nonblocking(nonblocking);
        Ok(())
    }

    /// Read timeout (`None`: wait forever). Expiry reports `WouldBlock`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.options.set_read_timeout(timeout)
    }

    /// Write timeout (`None`: wait forever). Expiry reports `WouldBlock`.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.options.set_write_timeout(timeout)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.options.read_timeout())
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> io::Result<Option<Duration>> {
        Ok(self.inner.options.write_timeout())
    }

    /// Bytes received and not yet read (`FIONREAD`).
    pub fn bytes_readable(&self) -> usize {
        self.with_socket(|s| s.recv_queue())
    }

    /// The TCP state, for diagnostics.
    pub fn state(&self) -> tcp::State {
        self.with_socket(|s| s.state())
    }

    fn with_socket<R>(&self, f: impl FnOnce(&mut tcp::Socket<'static>) -> R) -> R {
        f(self.inner.stack.shared().lock().tcp(self.inner.handle))
    }

    fn read_impl(&self, buf: &mut [u8]) -> io::Result<usize> {
        let inner = &self.inner;
        if buf.is_empty() {
            return Ok(0);
        }
        let wait = Wait::io(inner.options.nonblocking(), inner.options.read_timeout());
        block_on(&inner.stack, &inner.signal.rx, wait, |core| self.try_read(core, buf))
    }

    /// One read attempt under the core lock; `None` (after registering the receive waker with smoltcp) when
    /// nothing can be read yet. Shared by the blocking and the async paths.
    pub(super) fn try_read(&self, core: &mut Core, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let inner = &self.inner;
        if inner.read_shut.load(Ordering::Acquire) {
            return Some(Ok(0));
        }
        let socket = core.tcp(inner.handle);
        match socket.recv_slice(buf) {
            Ok(0) => {
                socket.register_recv_waker(&inner.signal.rx_waker);
                None
            }
            Ok(n) => {
                // The peer learns of the room this read made from the next
                // acknowledgement. Only when the buffer was more than half
                // full may its window be too small to keep data coming, and
                // then the driver must send a window update now (smoltcp
                // sends one once the window has doubled). Below that, the
                // driver need not run for this read.
                let queued_before = socket.recv_queue() + n;
                let quiet = queued_before * 2 <= socket.recv_capacity();
                core.note_read(inner.handle, n);
                core.driver_not_needed = quiet;
                Some(Ok(n))
            }
            Err(RecvError::Finished) => Some(Ok(0)),
            Err(RecvError::InvalidState) => match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    socket.register_recv_waker(&inner.signal.rx_waker);
                    None
                }
                _ => Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("connection with {} was reset", inner.peer),
                ))),
            },
        }
    }

    fn write_impl(&self, buf: &[u8]) -> io::Result<usize> {
        let inner = &self.inner;
        if buf.is_empty() {
            return Ok(0);
        }
        let wait = Wait::io(inner.options.nonblocking(), inner.options.write_timeout());
        block_on(&inner.stack, &inner.signal.tx, wait, |core| self.try_write(core, buf))
    }

    /// One write attempt under the core lock; `None` (after registering the send waker with smoltcp) when the
    /// send buffer is full. Shared by the blocking and the async paths.
    pub(super) fn try_write(&self, core: &mut Core, buf: &[u8]) -> Option<io::Result<usize>> {
        let inner = &self.inner;
        let socket = core.tcp(inner.handle);
        match socket.send_slice(buf) {
            Ok(0) => {
                socket.register_send_waker(&inner.signal.tx_waker);
                None
            }
            Ok(n) => {
                core.note_written(inner.handle);
                Some(Ok(n))
            }
            Err(tcp::SendError::InvalidState) => Some(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("cannot write to {}: the connection's sending side is closed", inner.peer),
            ))),
        }
    }

    /// The stack and the socket's wake-up events, for the async path.
    #[cfg(feature = "async")]
    pub(super) fn parts(&self) -> (&Stack, &SocketSignal) {
        (&self.inner.stack, &self.inner.signal)
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_impl(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_impl(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
