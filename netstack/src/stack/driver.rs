//! The driver thread: the only code that polls smoltcp and touches the NIC.
//!
//! Each iteration: acknowledge the doorbell, poll the interface under the
//! core lock, do listener, orphan, idle-buffer and FIN-keeper upkeep, compute the next
//! deadline (smoltcp's, the device's and the NIC's), then sleep in `poll(2)`
//! on the doorbell and the NIC's descriptor until that deadline. It never
//! spins: with nothing to do and no timers, it sleeps until woken.

use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::{PollIngressSingleResult, PollResult};
use smoltcp::time::Instant;

use super::Shared;
use super::core::Core;
use super::device::StackDevice;
use crate::nic::Nic;
use crate::sys;

/// Consecutive "poll again now" answers tolerated before the driver naps.
const SPIN_LIMIT: u32 = 1000;

pub(crate) fn run<N: Nic>(shared: Arc<Shared>, mut device: StackDevice<N>) {
    let counters = shared.counters.clone();
    let waker_fd = shared.waker.raw_fd();
    let nic_fd = device.nic.readiness_fd();
    let mut immediate_rounds = 0u32;
    loop {
        shared.waker.acknowledge();
        counters.driver_iterations.inc();
        let now = shared.now();
        let deadline = {
            let mut core = shared.lock();
            if core.shutdown {
                return;
            }
            core.now = now;
            device.service(now);
            let core = &mut *core;
            poll_shards(core, &mut device, now);
            core.maintain_listeners(&mut device.guard);
            core.settle_held(&mut device, now);
            core.reap_orphans(&mut device.guard);
            core.release_idle_buffers(&device.guard.rcv_high);
            if core.tidy_due() {
                core.tidy();
                device.tidy();
            }
            core.review_fin_keeper(device.fin_keeper());
            device.nic.flush();
            core.nic_backlog = device.nic.wants_writable();
            [core.sockets.poll_at(now), device.poll_at(), core.orphans.next_review()].into_iter().flatten().min()
        };
        if device.has_loopback() || shared.waker.is_pending() {
            continue;
        }
        let timeout = deadline.map(|d| if d > now { to_std(d - now) } else { Duration::ZERO });
        if timeout == Some(Duration::ZERO) {
            immediate_rounds += 1;
            if immediate_rounds < SPIN_LIMIT {
                continue;
            }
            counters.driver_spin_guard.inc();
            immediate_rounds = 0;
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        immediate_rounds = 0;
        let fds: &[_] = match nic_fd {
            Some(fd) => &[(waker_fd, false), (fd, device.nic.wants_writable())],
            None => &[(waker_fd, false)],
        };
        match sys::wait_ready(fds, timeout) {
            Ok(ready) if ready & 1 != 0 => shared.waker.drain(),
            Ok(_) => {}
            Err(e) => {
                log::error!("stack {}: driver wait failed: {e}; retrying in 10 ms", shared.name);
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        counters.driver_wakeups.inc();
    }
}

/// One round of smoltcp work: every arriving packet is handed to the
/// shard of its connection, one at a time; then each shard that has work
/// (a packet arrived, an application touched a socket, its deadline
/// passed) sends what it has and computes its next deadline. Shards
/// without work are not visited, so idle connections cost nothing here.
fn poll_shards<N: Nic>(core: &mut Core, device: &mut StackDevice<N>, now: Instant) {
    core.iface.poll_maintenance(now);
    core.polled.clear();
    while let Some(route) = device.stage(now) {
        let shard = core.shard_for(&device.guard, route);
        let s = &mut core.sockets.shards_mut()[shard];
        s.dirty = true;
        if core.iface.poll_ingress_single(now, device, &mut s.set) == PollIngressSingleResult::None {
            // The NIC cannot take a reply now: the packet stays staged.
            break;
        }
    }
    for (i, s) in core.sockets.shards_mut().iter_mut().enumerate() {
        if !s.due(now) {
            continue;
        }
        core.polled.push(i);
        s.dirty = false;
        while core.iface.poll_egress(now, device, &mut s.set) != PollResult::None {}
        s.deadline = core.iface.poll_at(now, &s.set);
    }
}

fn to_std(d: smoltcp::time::Duration) -> Duration {
    Duration::from_micros(d.total_micros())
}

/// Converts a std instant into the stack's smoltcp clock.
pub(crate) fn smol_now(epoch: std::time::Instant) -> Instant {
    Instant::from_micros(epoch.elapsed().as_micros() as i64)
}
