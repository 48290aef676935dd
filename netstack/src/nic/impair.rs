//! The impairment middleware: wraps any [`Nic`] and makes its ingress and/or
//! egress lossy, duplicating, reordering, corrupting, slow or narrow.
//!
//! The decisions are made by two [`ImpairPipe`]s (sans-IO, seeded); this file
//! only moves packets between the pipes, the inner NIC and smoltcp.

use std::sync::Arc;

use smoltcp::phy::{self, Device, DeviceCapabilities, RxToken, TxToken};
use smoltcp::time::Instant;

use super::Nic;
use super::impair_pipe::ImpairPipe;
pub use super::impair_pipe::{ImpairConfig, ImpairCounters};
use crate::stats::CounterSource;
use crate::wake::DriverWaker;

/// A NIC whose traffic passes through two impairment pipes.
#[derive(Debug)]
pub struct Impair<D: Nic> {
    inner: D,
    ingress: ImpairPipe,
    egress: ImpairPipe,
    egress_transparent: bool,
}

impl<D: Nic> Impair<D> {
    /// Impairs packets that `inner` receives; egress is untouched. Wrapping
    /// both ends of a link this way impairs both directions.
    pub fn new(inner: D, ingress: ImpairConfig) -> Self {
        Self::with_directions(inner, ingress, ImpairConfig::default())
    }

    /// Impairs both what `inner` receives and what it sends.
    pub fn with_directions(inner: D, ingress: ImpairConfig, egress: ImpairConfig) -> Self {
        Self {
            inner,
            egress_transparent: egress.is_transparent(),
            ingress: ImpairPipe::new(ingress),
            egress: ImpairPipe::new(egress),
        }
    }

    /// Counters of the ingress direction.
    pub fn ingress_counters(&self) -> Arc<ImpairCounters> {
        self.ingress.counters()
    }

    /// Counters of the egress direction.
    pub fn egress_counters(&self) -> Arc<ImpairCounters> {
        self.egress.counters()
    }

    /// Moves every packet the inner NIC has into the ingress pipe.
    fn pull_ingress(&mut self, now: Instant) {
        while let Some((rx, _tx)) = self.inner.receive(now) {
            let packet = rx.consume(|b| b.to_vec());
            self.ingress.push(now, packet);
        }
    }

    /// Sends every due egress packet to the inner NIC while it has room.
    fn flush_egress(&mut self, now: Instant) {
        while self.egress.has_ready(now) {
            let Some(token) = self.inner.transmit(now) else {
                break;
            };
            if let Some(packet) = self.egress.pop(now) {
                token.consume(packet.len(), |b| b.copy_from_slice(&packet));
            }
        }
    }
}

/// A packet released by the ingress pipe.
pub struct ImpairRx(Vec<u8>);

impl phy::RxToken for ImpairRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// Permission to send through the egress side.
pub enum ImpairTx<'a, T: phy::TxToken> {
    /// Egress is transparent: straight to the inner NIC.
    Direct(T),
    /// Egress is impaired: into the pipe, out when due.
    Piped(&'a mut ImpairPipe, Instant),
}

impl<T: phy::TxToken> phy::TxToken for ImpairTx<'_, T> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        match self {
            ImpairTx::Direct(token) => token.consume(len, f),
            ImpairTx::Piped(pipe, now) => {
                let mut packet = vec![0; len];
                let r = f(&mut packet);
                pipe.push(now, packet);
                r
            }
        }
    }
}

impl<D: Nic> Device for Impair<D> {
    type RxToken<'a> = ImpairRx;
    type TxToken<'a> = ImpairTx<'a, D::TxToken<'a>>;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        self.flush_egress(now);
        if !self.ingress.has_ready(now) {
            self.pull_ingress(now);
        }
        let packet = self.ingress.pop(now)?;
        let tx = if self.egress_transparent {
            ImpairTx::Direct(self.inner.transmit(now)?)
        } else {
            ImpairTx::Piped(&mut self.egress, now)
        };
        Some((ImpairRx(packet), tx))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        if self.egress_transparent {
            return self.inner.transmit(now).map(ImpairTx::Direct);
        }
        self.flush_egress(now);
        Some(ImpairTx::Piped(&mut self.egress, now))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = self.inner.capabilities();
        let narrowest = [self.ingress.config().mtu, self.egress.config().mtu].into_iter().flatten().min();
        if let Some(mtu) = narrowest {
            caps.max_transmission_unit = caps.max_transmission_unit.min(mtu);
        }
        caps
    }
}

impl<D: Nic> Nic for Impair<D> {
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
    }

    fn poll_at(&self) -> Option<Instant> {
        [self.ingress.poll_at(), self.egress.poll_at(), self.inner.poll_at()].into_iter().flatten().min()
    }

    fn service(&mut self, now: Instant) {
        self.inner.service(now);
        self.flush_egress(now);
    }

    fn counters(&self) -> Vec<(String, Arc<dyn CounterSource>)> {
        let mut all = self.inner.counters();
        all.push(("impair.ingress".to_string(), self.ingress.counters() as Arc<dyn CounterSource>));
        all.push(("impair.egress".to_string(), self.egress.counters() as Arc<dyn CounterSource>));
        all
    }
}
