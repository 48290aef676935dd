//! The baseline: two smoltcp interfaces and one TCP connection, polled
//! directly in a single loop with no threads, locks or plebnet layers —
//! the shape of smoltcp's own examples. Checksums are computed and checked
//! as in plebnet, so both sides do the same protocol work.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant as StdInstant;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of an in-memory link.
struct QueueDevice {
    rx: Queue,
    tx: Queue,
    mtu: usize,
}

struct Rx(Vec<u8>);
struct Tx(Queue);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; len];
        let r = f(&mut buf);
        self.0.borrow_mut().push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
        let p = self.rx.borrow_mut().pop_front()?;
        Some((Rx(p), Tx(self.tx.clone())))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx> {
        Some(Tx(self.tx.clone()))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

fn iface(dev: &mut QueueDevice, addr: IpAddress, now: Instant) -> Interface {
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), dev, now);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(addr, 24));
    });
    iface
}

/// Moves `bytes` over one raw smoltcp connection; returns bits per second.
pub fn goodput(bytes: usize, buffer: usize, mtu: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let ab: Queue = Rc::default();
    let ba: Queue = Rc::default();
    let mut da = QueueDevice { rx: ba.clone(), tx: ab.clone(), mtu };
    let mut db = QueueDevice { rx: ab, tx: ba, mtu };
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let (addr_a, addr_b) = (IpAddress::v4(10, 99, 0, 1), IpAddress::v4(10, 99, 0, 2));
    let mut ia = iface(&mut da, addr_a, now());
    let mut ib = iface(&mut db, addr_b, now());
    let socket = || tcp::Socket::new(tcp::SocketBuffer::new(vec![0; buffer]), tcp::SocketBuffer::new(vec![0; buffer]));
    let mut sa = SocketSet::new(Vec::new());
    let mut sb = SocketSet::new(Vec::new());
    let server = sa.add(socket());
    let client = sb.add(socket());
    sa.get_mut::<tcp::Socket>(server).listen(5201).map_err(|e| format!("listen: {e}"))?;
    sb.get_mut::<tcp::Socket>(client)
        .connect(ib.context(), (addr_a, 5201), 49152)
        .map_err(|e| format!("connect: {e}"))?;

    let chunk = vec![0x5au8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let (mut sent, mut got) = (0usize, 0usize);
    let mut started = None;
    let deadline = StdInstant::now() + std::time::Duration::from_secs(120);
    while got < bytes {
        let t = now();
        ib.poll(t, &mut db, &mut sb);
        ia.poll(t, &mut da, &mut sa);
        let c = sb.get_mut::<tcp::Socket>(client);
        if c.may_send() {
            started.get_or_insert_with(StdInstant::now);
            while sent < bytes {
                let n = c.send_slice(&chunk[..(bytes - sent).min(chunk.len())]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                sent += n;
            }
        }
        let s = sa.get_mut::<tcp::Socket>(server);
        while let Ok(n) = s.recv_slice(&mut sink) {
            if n == 0 {
                break;
            }
            got += n;
        }
        if StdInstant::now() > deadline {
            return Err(format!("raw smoltcp baseline stalled at {got} of {bytes} bytes").into());
        }
    }
    let secs = started.map(|s| s.elapsed().as_secs_f64()).unwrap_or(f64::MIN_POSITIVE);
    Ok(bytes as f64 * 8.0 / secs)
}
