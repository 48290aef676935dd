//! Counters that the driver thread bumps and any thread can read.
//!
//! Every drop, in every layer, has a named counter: nothing is lost silently.

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Something that can list its counters by name.
pub trait CounterSource: Send + Sync + std::fmt::Debug {
    /// `(name, value)` for every counter, in a stable order.
    fn snapshot(&self) -> Vec<(&'static str, u64)>;
}

/// Declares a struct of [`Counter`]s that implements [`CounterSource`].
#[macro_export]
macro_rules! counters {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$fmeta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: $crate::stats::Counter,)*
        }
        impl $crate::stats::CounterSource for $name {
            fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field.get()),)*]
            }
        }
    };
}

/// A named group of counters, as reported by a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterGroup {
    /// Which layer the counters belong to, e.g. `stack`, `memlink`, `impair`.
    pub layer: String,
    /// `(name, value)` pairs.
    pub values: Vec<(&'static str, u64)>,
}

impl CounterGroup {
    /// The value of the counter called `name`, if the group has one.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

crate::counters! {
    /// What a stack's driver and device wrapper did.
    pub struct StackCounters {
        /// Packets received from the NIC (before validation).
        rx_packets,
        /// Bytes received from the NIC.
        rx_bytes,
        /// Packets sent to the NIC.
        tx_packets,
        /// Bytes sent to the NIC.
        tx_bytes,
        /// Packets to the stack's own addresses, delivered without the NIC.
        loopback_packets,
        /// Arriving packets refused as truncated or impossible: bad lengths,
        /// IHL below 5, an unparsable IPv6 Hop-by-Hop header, TCP segments
        /// smoltcp cannot represent (SYN with FIN or RST, FIN with RST,
        /// options that do not parse, port 0), UDP to port 0.
        rx_dropped_malformed,
        /// Arriving packets refused for a wrong checksum (or none: a zero UDP
        /// checksum over IPv6, RFC 8200 8.1).
        rx_dropped_checksum,
        /// Arriving packets with a loopback source or destination.
        rx_dropped_martian,
        /// Arriving IPv4 fragments: smoltcp is built without reassembly (no
        /// `proto-ipv4-fragmentation`), so every fragment is dropped.
        rx_dropped_fragment,
        /// Arriving Ethernet frames of a type the stack does not speak
        /// (neither IPv4, IPv6 nor ARP), or too short for a header.
        rx_dropped_link,
        /// Retransmitted SYNs for a connection that already exists.
        syn_dropped_duplicate,
        /// SYNs to a listener whose backlog was full.
        syn_dropped_backlog_full,
        /// Half-open (SYN-RECEIVED) connections a listener with a full
        /// backlog dropped silently to make room for new SYNs.
        syn_half_open_evicted,
        /// SYNs to a listener dropped unanswered because the stack held
        /// `max_connections` connections (StackConfig).
        syn_dropped_conn_limit,
        /// SYNs to a listener dropped unanswered because the stack held
        /// `max_connections_per_peer` connections with the SYN's source
        /// address (StackConfig).
        syn_dropped_peer_limit,
        /// RSTs whose sequence number was inside the receive window but not
        /// exactly RCV.NXT (RFC 5961 3.2): not delivered, answered with a
        /// challenge ACK.
        rst_challenged,
        /// RSTs outside the receive window: dropped silently (RFC 5961 3.2).
        rst_dropped_out_of_window,
        /// RSTs exactly at RCV.NXT, delivered: they reset their connection.
        rst_accepted,
        /// SYNs on a synchronized connection (RFC 5961 4.2): not delivered,
        /// answered with a challenge ACK.
        syn_challenged,
        /// Challenge ACKs sent (RFC 5961 3.2, 4.2).
        challenge_acks_sent,
        /// Challenge ACKs not sent because the stack's rate limit
        /// (`tcp_challenge_ack_limit` per second) was used up (RFC 5961 7).
        challenge_acks_suppressed,
        /// RSTs and SYNs dropped because more arrived in one poll than the
        /// stack holds for checking (4096).
        rx_dropped_held_full,
        /// Times the driver thread woke from sleep.
        driver_wakeups,
        /// Driver loop iterations (each polls smoltcp once).
        driver_iterations,
        /// Times the driver slept 1 ms because smoltcp asked to be polled
        /// immediately over and over without progress.
        driver_spin_guard,
        /// Orphaned connections aborted after lingering too long.
        orphans_aborted,
        /// Outgoing connections in TIME-WAIT (for a second or more) whose
        /// sockets were dropped to reuse their ports, because every
        /// ephemeral port was taken.
        time_wait_reused,
        /// TCP connections whose buffer pages were given back to the kernel
        /// after a whole `tcp_buffer_idle_release` without traffic.
        tcp_buffers_released_idle,
        /// Closed TCP connections whose buffer pages were given back on
        /// entering TIME-WAIT.
        tcp_buffers_released_time_wait,
        /// Pure ACKs handed to smoltcp by the recovery assist (NewReno
        /// partial ACKs, data-carrying duplicates, tail-loss probes).
        recovery_acks_injected,
        /// Outgoing pure ACKs whose rewound sequence number the recovery
        /// assist moved to the highest sequence number sent.
        recovery_acks_rewritten,
        /// Arriving segments with data or FIN whose stale ACK the recovery
        /// assist raised, because smoltcp would drop them whole.
        recovery_acks_raised,
        /// Reopening window updates the recovery assist sent again itself.
        recovery_packets_resent,
        /// Bare FIN|ACK segments the FIN keeper resent because our FIN stayed
        /// unacknowledged with no smoltcp timer left to resend it (always
        /// on, whether or not the recovery assist is).
        fin_resent,
    }
}
