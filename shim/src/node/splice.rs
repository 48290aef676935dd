//! Joining two byte streams: what a port forward does with each connection.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;

use super::multipath::OverlayStream;
use crate::net::TcpStreamApi;

/// Bytes copied each way by one [`splice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Copies `from` into `to` until EOF, then half-closes `to` so the far end
/// sees the EOF too.
fn pump(mut from: impl Read, to: &impl TcpStreamApi) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut writer = to.try_clone()?;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.shutdown(Shutdown::Write)?;
    Ok(total)
}

/// Carries bytes both ways between `a` and `b` until both directions have
/// ended, each half-close passed on as a half-close. An error in one
/// direction resets both streams, so neither end waits forever.
pub fn splice<A: TcpStreamApi, B: TcpStreamApi>(a: A, b: B) -> io::Result<Spliced> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let other = thread::Builder::new().name("plebnet-splice".into()).spawn(move || {
        let r = pump(&mut { b2 }, &a2);
        if r.is_err() {
            let _ = a2.shutdown(Shutdown::Both);
        }
        r
    })?;
    let here = pump(&mut a.try_clone()?, &b);
    if here.is_err() {
        let _ = b.shutdown(Shutdown::Both);
        let _ = a.shutdown(Shutdown::Both);
    }
    let there = other.join().unwrap_or_else(|_| Err(io::Error::other("splice thread panicked")));
    Ok(Spliced { a_to_b: here?, b_to_a: there? })
}

/// Copies with `read` into `write` until `read` gives 0; returns the bytes copied.
fn copy_until_end(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        write(&buf[..n])?;
        total += n as u64;
    }
}

/// Writes all of `buf` to `overlay`.
fn write_all_overlay(overlay: &dyn OverlayStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match overlay.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// [`splice`] between a kernel connection (`a`) and a multipath service's overlay stream (`b`): bytes both
/// ways until both directions have ended, half-closes passed on, an error in either direction resetting
/// both. Once both directions have ended, waits for [`OverlayStream::finish`] so that dropping the overlay
/// stream loses nothing.
pub fn splice_overlay<A: TcpStreamApi>(a: A, b: Box<dyn OverlayStream>) -> io::Result<Spliced> {
    let b: Arc<dyn OverlayStream> = Arc::from(b);
    let (a2, mut writer, b2) = (a.try_clone()?, a.try_clone()?, b.clone());
    let other = thread::Builder::new().name("plebnet-splice".into()).spawn(move || {
        let r = copy_until_end(|buf| b2.read(buf), |buf| writer.write_all(buf))
            .and_then(|n| a2.shutdown(Shutdown::Write).map(|()| n));
        if r.is_err() {
            let _ = a2.shutdown(Shutdown::Both);
            b2.abort();
        }
        r
    })?;
    let mut reader = a.try_clone()?;
    let here = copy_until_end(|buf| reader.read(buf), |buf| write_all_overlay(&*b, buf))
        .and_then(|n| b.shutdown_write().map(|()| n));
    if here.is_err() {
        b.abort();
        let _ = a.shutdown(Shutdown::Both);
    }
    let there = other.join().unwrap_or_else(|_| Err(io::Error::other("splice thread panicked")));
    let done = Spliced { a_to_b: here?, b_to_a: there? };
    b.finish()?;
    Ok(done)
}
