//! A transmit buffer that a NIC reuses from packet to packet without
//! zeroing all of it each time.
//!
//! smoltcp gives a transmit token a length and writes the packet into a
//! buffer of that length: every header field and every payload byte. The
//! one gap is TCP option padding after an end-of-options byte, which
//! receivers skip. `clear()` then `resize(len, 0)` zeroed the whole buffer
//! for every packet: 1.5 KB of memset per packet at MTU 1500 (3% of a
//! driver's time in the memlink benchmark), 64 KB at a jumbo MTU.
//!
//! [`PacketBuf::prepare`] zeroes only where the buffer grows, and the first
//! [`HEADER_ROOM`] bytes, where the headers and that padding live: so no
//! byte of an earlier packet (perhaps sent to another peer) can leave in
//! the padding of a later one.

/// Bytes zeroed at the start of every packet: Ethernet (14), the largest
/// IPv4 header (60) or IPv6 header with room for extension headers, and
/// the largest TCP header (60).
pub(crate) const HEADER_ROOM: usize = 192;

/// A reusable packet buffer. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct PacketBuf {
    /// Initialized bytes; the packet is the first `len`.
    bytes: Vec<u8>,
    len: usize,
}

impl PacketBuf {
    /// The buffer for a packet of `len` bytes, for smoltcp to write.
    pub(crate) fn prepare(&mut self, len: usize) -> &mut [u8] {
        self.len = len;
        prepare_vec(&mut self.bytes, len)
    }

    /// Hands the packet over in `out`, whose old buffer this one keeps for
    /// the next packet: no byte is copied. `out` ends up exactly the packet.
    pub(crate) fn swap_into(&mut self, out: &mut Vec<u8>) {
        std::mem::swap(&mut self.bytes, out);
        out.truncate(self.len);
        self.len = 0;
    }

    /// The packet written last.
    pub(crate) fn packet(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Its length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// [`PacketBuf::prepare`] for a plain vector whose initialized length is
/// the buffer: grows it with zeros if needed and zeroes its header room.
pub(crate) fn prepare_vec(bytes: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if bytes.len() < len {
        bytes.resize(len, 0);
    }
    bytes[..len.min(HEADER_ROOM)].fill(0);
    &mut bytes[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_buffer_holds_exactly_the_new_packet_and_no_old_header_bytes() {
        let mut buf = PacketBuf::default();
        buf.prepare(1500).fill(0xAB);
        assert_eq!(buf.packet(), &[0xAB; 1500][..]);
        // A shorter packet: its header room is clean, whatever smoltcp
        // leaves unwritten there reads as zero.
        let short = buf.prepare(100);
        assert!(short.iter().all(|&b| b == 0));
        short[..40].fill(1);
        assert_eq!(buf.len(), 100);
        assert_eq!(&buf.packet()[..40], &[1; 40][..]);
        assert!(buf.packet()[40..].iter().all(|&b| b == 0));
        // A longer one again: header room zeroed, the rest is smoltcp's to
        // write (here the bytes of the first packet are still there).
        let long = buf.prepare(1400);
        assert_eq!(long.len(), 1400);
        assert!(long[..HEADER_ROOM].iter().all(|&b| b == 0));
        // Growing past every earlier length zero-fills the new part.
        let grown = buf.prepare(9000);
        assert!(grown[1500..].iter().all(|&b| b == 0));
    }
}
