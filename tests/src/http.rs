//! A small HTTP/1.1 server and client written against [`NetStack`], so a
//! plebnet stack can face real HTTP peers (curl, Python's http.server) in
//! interop tests. One request per connection (`Connection: close`).
//!
//! Server: `GET /<name>` returns a registered body; `PUT /<name>` (with or
//! without `Expect: 100-continue`) reads the body and answers its sha256 in
//! hex.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::thread;

use plebnet::net::{NetStack, TcpListenerApi, TcpStreamApi};
use sha2::{Digest, Sha256};

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    /// Body bytes that arrived with the head.
    rest: Vec<u8>,
}

/// Reads up to the blank line that ends the head.
fn read_head(stream: &mut impl Read) -> io::Result<(String, HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            let mut lines = text.split("\r\n");
            let first = lines.next().unwrap_or_default().to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok((first, headers, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the HTTP head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_request(stream: &mut impl Read) -> io::Result<Head> {
    let (first, headers, rest) = read_head(stream)?;
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    Ok(Head { method, path, headers, rest })
}

/// Hashes exactly `len` body bytes: `already` first, then from `stream`.
fn hash_body(stream: &mut impl Read, already: &[u8], len: usize) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    let first = already.len().min(len);
    hasher.update(&already[..first]);
    let mut left = len - first;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = left.min(buf.len());
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("body short by {left} bytes")));
        }
        hasher.update(&buf[..n]);
        left -= n;
    }
    Ok(hasher.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn handle(mut stream: impl TcpStreamApi, files: &HashMap<String, Vec<u8>>) -> io::Result<()> {
    let head = read_request(&mut stream)?;
    let name = head.path.trim_start_matches('/');
    match head.method.as_str() {
        "GET" => match files.get(name) {
            Some(body) => {
                let h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                stream.write_all(h.as_bytes())?;
                stream.write_all(body)?;
            }
            None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
        },
        "PUT" | "POST" => {
            let len: usize = head.headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if head.headers.get("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let digest = hex(&hash_body(&mut stream, &head.rest, len)?);
            let h =
                format!("HTTP/1.1 201 Created\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", digest.len() + 1);
            stream.write_all(h.as_bytes())?;
            stream.write_all(format!("{digest}\n").as_bytes())?;
        }
        _ => stream.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
    }
    stream.shutdown(Shutdown::Write)?;
    // Let the client see everything before the socket goes away.
    let _ = io::copy(&mut stream, &mut io::sink());
    Ok(())
}

/// Serves `files` on `addr` of `stack` until the process ends; returns the
/// bound address.
pub fn serve<S: NetStack>(stack: &S, addr: SocketAddr, files: HashMap<String, Vec<u8>>) -> io::Result<SocketAddr> {
    let listener = stack.tcp_listen(addr)?;
    let bound = listener.local_addr()?;
    let files = Arc::new(files);
    thread::spawn(move || {
        while let Ok((stream, _)) = listener.accept() {
            let files = files.clone();
            thread::spawn(move || {
                if let Err(e) = handle(stream, &files) {
                    eprintln!("http server: {e}");
                }
            });
        }
    });
    Ok(bound)
}

/// `GET http://addr/path` over `stack`; returns the status code, body
/// length and the body's sha256.
pub fn get<S: NetStack>(stack: &S, addr: SocketAddr, path: &str) -> io::Result<(u16, usize, [u8; 32])> {
    let mut stream = stack.tcp_connect(addr)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    let (status_line, headers, rest) = read_head(&mut stream)?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Content-Length"))?;
    let digest = hash_body(&mut stream, &rest, len)?;
    Ok((status, len, digest))
}

/// `PUT http://addr/path` with `body` over `stack`; returns the status and
/// the response body (the sha256 hex for this module's server).
pub fn put<S: NetStack>(stack: &S, addr: SocketAddr, path: &str, body: &[u8]) -> io::Result<(u16, String)> {
    let mut stream = stack.tcp_connect(addr)?;
    let req =
        format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    let (status_line, _headers, mut rest) = read_head(&mut stream)?;
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    stream.read_to_end(&mut rest)?;
    Ok((status, String::from_utf8_lossy(&rest).trim().to_string()))
}
