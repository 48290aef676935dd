//! Bulk TCP goodput of one connection through any [`NetStack`]: the
//! measurement every TCP figure shares, whatever the stack and link.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Instant;

use plebnet::net::{NetStack, TcpListenerApi, TcpStreamApi};

/// Moves `bytes` from a client on `client` to a server on `server` at
/// `addr` (port 0: any) and returns the goodput in bits per second,
/// measured at the receiver from the first byte sent to EOF.
pub fn tcp_goodput<S: NetStack>(server: &S, client: &S, addr: SocketAddr, bytes: usize) -> Result<f64, String> {
    let listener = server.tcp_listen(addr).map_err(|e| format!("listen {addr}: {e}"))?;
    let target = listener.local_addr().map_err(|e| e.to_string())?;
    let client = client.tcp_connect(target).map_err(|e| format!("connect {target}: {e}"))?;
    let (mut served, _) = listener.accept().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let chunk = vec![0x5au8; 64 * 1024];
        let mut client = client;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            client.write_all(&chunk[..n])?;
            left -= n;
        }
        client.shutdown(std::net::Shutdown::Write)
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = served.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    writer.join().map_err(|_| "writer panicked")?.map_err(|e| e.to_string())?;
    if got != bytes {
        return Err(format!("moved {got} of {bytes} bytes"));
    }
    Ok(bytes as f64 * 8.0 / secs)
}
