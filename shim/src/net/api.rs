//! The traits a network stack implements so relay code can be generic over it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

/// A network stack: something that opens TCP and UDP sockets.
///
/// Implemented by [`OsStack`](super::OsStack) (the kernel, via std::net) and
/// by [`Stack`](super::Stack) (a plebnet userspace stack). Error kinds follow
/// std::net on Linux: `ConnectionRefused` on RST, `TimedOut` for an
/// unanswered connect, `WouldBlock` in non-blocking mode and when a
/// read/write timeout expires, `AddrInUse` for a taken port.
pub trait NetStack: Clone + Send + Sync + 'static {
    /// The connected TCP socket type.
    type TcpStream: TcpStreamApi;
    /// The listening TCP socket type.
    type TcpListener: TcpListenerApi<Stream = Self::TcpStream>;
    /// The UDP socket type.
    type UdpSocket: UdpSocketApi;

    /// Opens a TCP connection.
    fn tcp_connect(&self, addr: SocketAddr) -> io::Result<Self::TcpStream>;
    /// Opens a TCP connection, waiting at most `timeout`.
    fn tcp_connect_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::TcpStream>;
    /// Listens for TCP connections.
    fn tcp_listen(&self, addr: SocketAddr) -> io::Result<Self::TcpListener>;
    /// Binds a UDP socket.
    fn udp_bind(&self, addr: SocketAddr) -> io::Result<Self::UdpSocket>;
}

/// What relay code may do with a connected TCP socket.
pub trait TcpStreamApi: Read + Write + std::fmt::Debug + Send + Sync + Sized + 'static {
    /// See [`std::net::TcpStream::peer_addr`].
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// See [`std::net::TcpStream::local_addr`].
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// See [`std::net::TcpStream::shutdown`].
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// See [`std::net::TcpStream::try_clone`].
    fn try_clone(&self) -> io::Result<Self>;
    /// See [`std::net::TcpStream::set_nodelay`].
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()>;
    /// See [`std::net::TcpStream::nodelay`].
    fn nodelay(&self) -> io::Result<bool>;
    /// See [`std::net::TcpStream::set_nonblocking`].
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// See [`std::net::TcpStream::set_read_timeout`].
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// See [`std::net::TcpStream::set_write_timeout`].
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

/// What relay code may do with a listening TCP socket.
pub trait TcpListenerApi: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The connection type `accept` yields.
    type Stream: TcpStreamApi;
    /// See [`std::net::TcpListener::accept`].
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)>;
    /// See [`std::net::TcpListener::local_addr`].
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// See [`std::net::TcpListener::set_nonblocking`].
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
}

/// What relay code may do with a UDP socket.
pub trait UdpSocketApi: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// See [`std::net::UdpSocket::send_to`].
    fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize>;
    /// See [`std::net::UdpSocket::recv_from`].
    fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// See [`std::net::UdpSocket::connect`].
    fn connect(&self, addr: SocketAddr) -> io::Result<()>;
    /// See [`std::net::UdpSocket::send`].
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
    /// See [`std::net::UdpSocket::recv`].
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// See [`std::net::UdpSocket::local_addr`].
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// See [`std::net::UdpSocket::peer_addr`].
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// See [`std::net::UdpSocket::set_nonblocking`].
    fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()>;
    /// See [`std::net::UdpSocket::set_read_timeout`].
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// See [`std::net::UdpSocket::set_write_timeout`].
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

/// Implements the socket traits for types whose inherent methods already
/// have std's names and signatures (std's own, and plebnet's).
macro_rules! delegate_socket_apis {
    ($stream:ty, $listener:ty, $udp:ty) => {
        impl $crate::net::TcpStreamApi for $stream {
            fn peer_addr(&self) -> io::Result<SocketAddr> {
                <$stream>::peer_addr(self)
            }
            fn local_addr(&self) -> io::Result<SocketAddr> {
                <$stream>::local_addr(self)
            }
            fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
                <$stream>::shutdown(self, how)
            }
            fn try_clone(&self) -> io::Result<Self> {
                <$stream>::try_clone(self)
            }
            fn set_nodelay(&self, on: bool) -> io::Result<()> {
                <$stream>::set_nodelay(self, on)
            }
            fn nodelay(&self) -> io::Result<bool> {
                <$stream>::nodelay(self)
            }
            fn set_nonblocking(&self, on: bool) -> io::Result<()> {
                <$stream>::set_nonblocking(self, on)
            }
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$stream>::set_read_timeout(self, t)
            }
            fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$stream>::set_write_timeout(self, t)
            }
        }
        impl $crate::net::TcpListenerApi for $listener {
            type Stream = $stream;
            fn accept(&self) -> io::Result<($stream, SocketAddr)> {
                <$listener>::accept(self)
            }
            fn local_addr(&self) -> io::Result<SocketAddr> {
                <$listener>::local_addr(self)
            }
            fn set_nonblocking(&self, on: bool) -> io::Result<()> {
                <$listener>::set_nonblocking(self, on)
            }
        }
        impl $crate::net::UdpSocketApi for $udp {
            fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
                <$udp>::send_to(self, buf, addr)
            }
            fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
                <$udp>::recv_from(self, buf)
            }
            fn connect(&self, addr: SocketAddr) -> io::Result<()> {
                <$udp>::connect(self, addr)
            }
            fn send(&self, buf: &[u8]) -> io::Result<usize> {
                <$udp>::send(self, buf)
            }
            fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$udp>::recv(self, buf)
            }
            fn local_addr(&self) -> io::Result<SocketAddr> {
                <$udp>::local_addr(self)
            }
            fn peer_addr(&self) -> io::Result<SocketAddr> {
                <$udp>::peer_addr(self)
            }
            fn set_nonblocking(&self, on: bool) -> io::Result<()> {
                <$udp>::set_nonblocking(self, on)
            }
            fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$udp>::set_read_timeout(self, t)
            }
            fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                <$udp>::set_write_timeout(self, t)
            }
        }
    };
}
pub(crate) use delegate_socket_apis;
