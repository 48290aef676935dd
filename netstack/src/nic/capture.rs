//! Capture: a middleware that writes every packet its NIC sends and
//! receives to a pcap file (the classic format of libpcap, which tcpdump,
//! tshark and Wireshark read). Link type RAW (IP) for IP NICs, Ethernet for
//! tap.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::Nic;
use crate::stats::CounterSource;
use crate::wake::DriverWaker;

/// pcap link type for packets that begin with an IPv4 or IPv6 header.
const LINKTYPE_RAW: u32 = 101;
/// pcap link type for Ethernet frames.
const LINKTYPE_ETHERNET: u32 = 1;
/// Largest packet recorded whole.
const SNAPLEN: u32 = 65_535;

crate::counters! {
    /// What a capture recorded.
    pub struct CaptureCounters {
        /// Packets written to the file.
        packets_written,
        /// Packets that could not be written (disk full...); the traffic
        /// itself is unaffected.
        write_errors,
    }
}

/// The pcap file being written.
#[derive(Debug)]
struct PcapFile {
    out: BufWriter<File>,
    counters: Arc<CaptureCounters>,
}

impl PcapFile {
    fn record(&mut self, packet: &[u8]) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let caplen = packet.len().min(SNAPLEN as usize);
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&(now.as_secs() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&now.subsec_micros().to_le_bytes());
        header[8..12].copy_from_slice(&(caplen as u32).to_le_bytes());
        header[12..16].copy_from_slice(&(packet.len() as u32).to_le_bytes());
        match self.out.write_all(&header).and_then(|_| self.out.write_all(&packet[..caplen])) {
            Ok(()) => self.counters.packets_written.inc(),
            Err(_) => self.counters.write_errors.inc(),
        }
    }
}

/// A NIC whose traffic is recorded to a pcap file.
#[derive(Debug)]
pub struct Capture<N: Nic> {
    inner: N,
    file: Arc<Mutex<PcapFile>>,
    counters: Arc<CaptureCounters>,
}

impl<N: Nic> Capture<N> {
    /// Records `inner`'s traffic to a new file at `path` (truncated if it
    /// exists).
    pub fn new(inner: N, path: &Path) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(path)?);
        let link = match inner.capabilities().medium {
            Medium::Ethernet => LINKTYPE_ETHERNET,
            _ => LINKTYPE_RAW,
        };
        // Global header: magic, version 2.4, zone 0, sigfigs 0, snaplen, link type.
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&SNAPLEN.to_le_bytes());
        header.extend_from_slice(&link.to_le_bytes());
        out.write_all(&header)?;
        out.flush()?;
        let counters = Arc::new(CaptureCounters::default());
        Ok(Self { inner, file: Arc::new(Mutex::new(PcapFile { out, counters: counters.clone() })), counters })
    }
}

fn lock(file: &Mutex<PcapFile>) -> std::sync::MutexGuard<'_, PcapFile> {
    file.lock().unwrap_or_else(|e| e.into_inner())
}

/// A received packet, recorded when the stack takes it.
pub struct CaptureRx<'a, R> {
    inner: R,
    file: &'a Mutex<PcapFile>,
}

/// Permission to send, recording what is sent.
pub struct CaptureTx<'a, T> {
    inner: T,
    file: &'a Mutex<PcapFile>,
}

impl<R: phy::RxToken> phy::RxToken for CaptureRx<'_, R> {
    fn consume<T, F: FnOnce(&[u8]) -> T>(self, f: F) -> T {
        let file = self.file;
        self.inner.consume(|packet| {
            lock(file).record(packet);
            f(packet)
        })
    }
}

impl<T: phy::TxToken> phy::TxToken for CaptureTx<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let file = self.file;
        self.inner.consume(len, |buf| {
            let r = f(buf);
            lock(file).record(buf);
            r
        })
    }
}

impl<N: Nic> Device for Capture<N> {
    type RxToken<'a> = CaptureRx<'a, N::RxToken<'a>>;
    type TxToken<'a> = CaptureTx<'a, N::TxToken<'a>>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (rx, tx) = self.inner.receive(now)?;
        Some((CaptureRx { inner: rx, file: &self.file }, CaptureTx { inner: tx, file: &self.file }))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        let tx = self.inner.transmit(now)?;
        Some(CaptureTx { inner: tx, file: &self.file })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<N: Nic> Nic for Capture<N> {
    fn attach(&mut self, waker: DriverWaker) {
        self.inner.attach(waker);
    }

    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.readiness_fd()
    }

    fn ethernet_address(&self) -> Option<[u8; 6]> {
        self.inner.ethernet_address()
    }

    fn wants_writable(&self) -> bool {
        self.inner.wants_writable()
    }

    fn flush(&mut self) {
        self.inner.flush();
        if lock(&self.file).out.flush().is_err() {
            self.counters.write_errors.inc();
        }
    }

    fn poll_at(&self) -> Option<Instant> {
        self.inner.poll_at()
    }

    fn service(&mut self, now: Instant) {
        self.inner.service(now);
    }

    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        let mut all = self.inner.counters();
        all.push(("capture".to_string(), self.counters.clone() as Arc<dyn CounterSource>));
        all
    }
}

impl<N: Nic> Drop for Capture<N> {
    fn drop(&mut self) {
        let _ = lock(&self.file).out.flush();
    }
}
