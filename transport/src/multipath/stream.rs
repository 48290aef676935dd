//! One tunnel-level stream: its send buffer and credit, its receive buffer and window.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::error::TunnelError;

/// Where a stream is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// We sent BEGIN; waiting for CONNECTED or END.
    Opening,
    /// The peer sent BEGIN; waiting for the application to accept it.
    Incoming,
    /// Data flows.
    Open,
}

pub(super) struct Stream {
    pub phase: Phase,
    /// Bytes we may still send before the peer's next SENDME.
    pub send_credit: u64,
    pub send_buf: BytesMut,
    /// The application finished writing; END follows the buffered data.
    pub finishing: bool,
    pub end_sent: bool,
    pub recv_buf: VecDeque<Bytes>,
    pub recv_buffered: usize,
    /// Bytes the peer may still send before our next SENDME.
    pub recv_window_left: u64,
    /// Bytes the application read since our last SENDME.
    pub consumed: u64,
    pub peer_finished: bool,
    /// Why the stream is dead, if it is.
    pub error: Option<TunnelError>,
    /// The application dropped its handle.
    pub detached: bool,
    pub target: String,
}

impl Stream {
    pub fn new(phase: Phase, window: u32, target: String) -> Stream {
        Stream {
            phase,
            send_credit: 0,
            send_buf: BytesMut::new(),
            finishing: false,
            end_sent: false,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_window_left: u64::from(window),
            consumed: 0,
            peer_finished: false,
            error: None,
            detached: false,
            target,
        }
    }

    /// Bytes that could leave now, credit permitting.
    pub fn sendable(&self) -> usize {
        if self.phase != Phase::Open || self.error.is_some() {
            return 0;
        }
        self.send_buf.len().min(usize::try_from(self.send_credit).unwrap_or(usize::MAX))
    }

    /// END is due: finished, everything buffered has left, END not yet sent.
    pub fn end_due(&self) -> bool {
        self.finishing && !self.end_sent && self.send_buf.is_empty() && self.error.is_none()
    }

    /// Copies buffered bytes out; returns the count.
    pub fn read_into(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.recv_buf.front_mut() else { break };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            n += take;
            if take == front.len() {
                self.recv_buf.pop_front();
            } else {
                let _ = front.split_to(take);
            }
        }
        self.recv_buffered -= n;
        self.consumed += n as u64;
        n
    }

    /// Both directions are over and the application let go: the stream can be forgotten.
    pub fn finished(&self) -> bool {
        let dead = self.error.is_some();
        self.detached && (dead || (self.end_sent && self.peer_finished))
    }
}
