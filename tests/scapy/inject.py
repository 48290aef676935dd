#!/usr/bin/env python3
"""Malformed and hostile packets against a plebnet stack on a tap device.

Run by tests/tests/scapy_hostile.rs as root inside the test's network
namespace, on the kernel side of the tap (IFACE). The plebnet stack on the
other side serves TCP and UDP echo (ECHO_PORT), a sink that answers the
sha256 of what it received (SINK_PORT) and a stalled receiver that reads
nothing until told (STALL_PORT). Debian's python3-scapy builds the packets.

What it does:

* opens a real kernel TCP connection to the sink and sends the LEGIT file
  (16 MiB) in chunks, each written by a thread while one case runs, so that
  the cases hit the stack while the legitimate transfer is in flight;
* after SYNC_AT bytes it waits for the sink's "sync" line: RCV.NXT of the
  legitimate connection then stands still, and RSTs, a SYN and ICMP errors
  are aimed at it (RFC 5961 windows are exact only while it stands still);
* fills the stalled connection's receive window with the STALL file, then
  sends zero-window probes on it;
* runs every other case from a fake host (FAKE4 / FAKE6 with FAKE_MAC, for
  which this script answers ARP and neighbour solicitations), so that
  nothing the stack answers reaches the kernel's own TCP/IP; each case uses
  its own port (BASE + case number, also its ICMP echo id and, as
  HLIM_BASE + case number, its IPv6 hop limit), and replies are matched to
  cases by it, whenever they come.

After each case it sends two ICMP echo "markers" and waits for their
replies (the stack has then read the case's packets), prints
{"event": "case", ...} and waits for a line on stdin before going on, so the
test can read the stack's counters per case. At the end it prints one
{"event": "report", ...} line with, per case, what was sent, every reply
matched to it and case-specific facts.

Every wait is bounded; a missing marker reply aborts with an "error" event.
"""

import argparse
import ctypes
import faulthandler
import json
import random
import socket
import struct
import sys
import threading
import time

from scapy.config import conf
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

conf.verb = 0

BASE = 40000
HLIM_BASE = 100  # hop limit of case n's IPv6 packets: HLIM_BASE + n
MARKER_ID = 0x7777
FAKE_MAC = "02:00:00:00:63:09"
M32 = 0xFFFFFFFF
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMP6 = 6, 17, 1, 58
WAIT = 5.0  # seconds any one expected reply may take


# ---------------------------------------------------------------- raw parts


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def pseudo(src, dst, proto, length):
    if ":" in src:
        a, b = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        return a + b + struct.pack("!I3xB", length, proto)
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def tcp_seg(src, dst, sport, dport, seq, ack, flags, win=65535, opts=b"", payload=b"", dataofs=None, bad_csum=False):
    """A TCP segment (header + payload) with a correct checksum unless
    bad_csum; opts are raw option bytes (padded to 4 with EOL)."""
    opts += b"\0" * (-len(opts) % 4)
    off = dataofs if dataofs is not None else (20 + len(opts)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & M32, ack & M32, off << 4, flags, win, 0, 0) + opts
    seg = hdr + payload
    c = csum(pseudo(src, dst, PROTO_TCP, len(seg)) + seg)
    if bad_csum:
        c ^= 0x5A5A
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def udp_dgram(src, dst, sport, dport, payload, checksum="ok", length=None, extra=b""):
    """A UDP datagram; checksum is "ok", "bad" or "zero". length overrides
    the length field; extra bytes follow the datagram (outside it)."""
    ln = 8 + len(payload) if length is None else length
    d = struct.pack("!HHHH", sport, dport, ln, 0) + payload
    c = csum(pseudo(src, dst, PROTO_UDP, len(d)) + d) or 0xFFFF
    if checksum == "bad":
        c = c ^ 0x5A5A or 1
    elif checksum == "zero":
        c = 0
    return d[:6] + struct.pack("!H", c) + d[8:] + extra


# ------------------------------------------------------------------ parsing


def ip_str(b):
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def flag_str(f):
    return "".join(c for bit, c in [(FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "A")] if f & bit)


EXT6 = (0, 43, 44, 60)


def upper6(nh, data):
    """Walks IPv6 extension headers: (protocol, payload)."""
    while nh in EXT6 and len(data) >= 8:
        length = 8 if nh == 44 else (data[1] + 1) * 8
        nh, data = data[0], data[length:]
    return nh, data


def parse_transport(proto, src, dst, data, out):
    if proto == PROTO_TCP and len(data) >= 20:
        sport, dport, seq, ack, off, flags, win = struct.unpack("!HHIIBBH", data[:16])
        hl = (off >> 4) * 4
        payload = data[hl:]
        out.update(proto="tcp", sport=sport, dport=dport, seq=seq, ack=ack, flags=flag_str(flags), win=win,
                   len=len(payload), data=payload[:64].hex(), kind="tcp:" + flag_str(flags))
    elif proto == PROTO_UDP and len(data) >= 8:
        sport, dport, ln = struct.unpack("!HHH", data[:6])
        payload = data[8:ln]
        out.update(proto="udp", sport=sport, dport=dport, len=len(payload), data=payload[:64].hex(), kind="udp")
    elif proto in (PROTO_ICMP, PROTO_ICMP6) and len(data) >= 8:
        t, code = data[0], data[1]
        name = "icmp" if proto == PROTO_ICMP else "icmp6"
        out.update(proto=name, type=t, code=code, kind=f"{name}:{t}/{code}")
        if (proto, t) in ((PROTO_ICMP, 0), (PROTO_ICMP, 8), (PROTO_ICMP6, 128), (PROTO_ICMP6, 129)):
            out["id"], out["seq"] = struct.unpack("!HH", data[4:8])
        elif (proto, t) == (PROTO_ICMP6, 135) and len(data) >= 24:
            out["target"] = ip_str(data[8:24])
        elif (proto == PROTO_ICMP and t in (3, 4, 5, 11, 12)) or (proto == PROTO_ICMP6 and t in (1, 2, 3, 4)):
            out["pointer"] = struct.unpack("!I", data[4:8])[0]
            out["quote"] = parse_ip(data[8:])


def parse_ip(b):
    """A summary of an IP packet (maybe truncated, as ICMP quotes are)."""
    out = {}
    if len(b) >= 20 and b[0] >> 4 == 4:
        hl = (b[0] & 15) * 4
        out.update(l3="ip4", src=ip_str(b[12:16]), dst=ip_str(b[16:20]))
        parse_transport(b[9], out["src"], out["dst"], b[hl:], out)
    elif len(b) >= 40 and b[0] >> 4 == 6:
        out.update(l3="ip6", src=ip_str(b[8:24]), dst=ip_str(b[24:40]), hlim=b[7])
        nh, data = upper6(b[6], b[40:])
        parse_transport(nh, out["src"], out["dst"], data, out)
    return out


def parse_frame(f):
    etype = struct.unpack("!H", f[12:14])[0]
    if etype == 0x0806 and len(f) >= 42:
        return {"l3": "arp", "kind": "arp", "op": struct.unpack("!H", f[20:22])[0], "tpa": ip_str(f[38:42])}
    if etype in (0x0800, 0x86DD):
        out = parse_ip(f[14:])
        out.setdefault("kind", out.get("l3", "?"))
        return out
    return {"kind": f"ether:{etype:04x}"}


# ------------------------------------------------------------------ sniffer


def attach_mac_filter(sock, mac):
    """Classic BPF: keep only frames whose Ethernet source is mac."""
    m = bytes.fromhex(mac.replace(":", ""))
    hi, lo = struct.unpack("!I", m[:4])[0], struct.unpack("!H", m[4:])[0]
    prog = [
        (0x20, 0, 0, 6),  # ld [6]
        (0x15, 0, 3, hi),  # jeq hi, next, drop
        (0x28, 0, 0, 10),  # ldh [10]
        (0x15, 0, 1, lo),  # jeq lo, accept, drop
        (0x06, 0, 0, 0x40000),  # accept
        (0x06, 0, 0, 0),  # drop
    ]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
    return buf


class Sniffer:
    """Every frame the stack sends, in order, parsed; answers ARP and
    neighbour solicitations for the fake host."""

    def __init__(self, a):
        self.a = a
        self.frames = []
        self.cond = threading.Condition()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._filter = attach_mac_filter(self.sock, a.stack_mac)
        self.sock.bind((a.iface, 0))
        self.reply = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.reply.bind((a.iface, 0))
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        a = self.a
        while True:
            f = self.sock.recv(1 << 18)
            try:
                s = parse_frame(f)
            except (struct.error, ValueError, IndexError) as e:
                s = {"kind": "unparsed", "error": str(e), "frame": f[:80].hex()}
            s["t"] = time.monotonic()
            if s.get("l3") == "arp" and s["op"] == 1 and s["tpa"] == a.fake4:
                arp = ARP(op=2, hwsrc=FAKE_MAC, psrc=a.fake4, hwdst=a.stack_mac, pdst=a.stack4)
                self.reply.send(bytes(Ether(src=FAKE_MAC, dst=a.stack_mac) / arp))
            if s.get("kind") == "icmp6:135/0" and s.get("target") == a.fake6:
                na = ICMPv6ND_NA(tgt=a.fake6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=FAKE_MAC)
                self.reply.send(bytes(Ether(src=FAKE_MAC, dst=a.stack_mac) / IPv6(src=a.fake6, dst=s["src"], hlim=255) / na))
            with self.cond:
                s["i"] = len(self.frames)
                self.frames.append(s)
                self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.frames)

    def wait_for(self, pred, since, timeout=WAIT):
        """The first frame from index `since` on that satisfies pred, or
        None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.frames):
                    s = self.frames[i]
                    i += 1
                    if pred(s):
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def between(self, start, end=None):
        with self.cond:
            return list(self.frames[start:end])


# ------------------------------------------------------------------- runner


class Abort(Exception):
    pass


class Run:
    def __init__(self, a):
        self.a = a
        self.kernel_mac = open(f"/sys/class/net/{a.iface}/address").read().strip()
        self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        self.tx.bind((a.iface, 0))
        self.sn = Sniffer(a)
        self.marker_seq = 0
        self.port = 0
        self.cases = []
        self.rng = random.Random(0x5CA9)

    # Sending -------------------------------------------------------------

    def send(self, pkt, src_mac=FAKE_MAC):
        """Sends an IP packet (scapy or bytes) from src_mac to the stack.
        An IPv6 packet from the fake host carries HLIM_BASE + the case's
        number as its hop limit, so that ICMPv6 errors quoting it can be
        matched to the case even when what follows the IPv6 header has no
        ports (smoltcp re-emits the quoted IPv6 header: the flow label is
        lost, the hop limit kept)."""
        raw = bytearray(bytes(pkt))
        etype = 0x0800
        if raw[0] >> 4 == 6:
            etype = 0x86DD
            if self.port and raw[8:24] == self.a.fake6_bytes:
                raw[7] = HLIM_BASE + self.port - BASE
        self.send_frame(raw, etype, src_mac)

    def send_frame(self, l3, etype, src_mac=FAKE_MAC):
        mac = lambda m: bytes.fromhex(m.replace(":", ""))
        self.tx.send(mac(self.a.stack_mac) + mac(src_mac) + struct.pack("!H", etype) + bytes(l3))

    def ip4(self, payload, proto, **kw):
        return IP(src=self.a.fake4, dst=self.a.stack4, proto=proto, **kw) / Raw(payload)

    def ip6(self, payload, nh, **kw):
        return IPv6(src=self.a.fake6, dst=self.a.stack6, nh=nh, **kw) / Raw(payload)

    # Markers ---------------------------------------------------------------

    def marker(self):
        self.marker_seq += 1
        seq = self.marker_seq
        since = self.sn.mark()
        self.send(IP(src=self.a.fake4, dst=self.a.stack4) / ICMP(type=8, id=MARKER_ID, seq=seq) / b"marker")
        got = self.sn.wait_for(lambda s: s.get("kind") == "icmp:0/0" and s.get("id") == MARKER_ID and s.get("seq") == seq, since)
        if got is None:
            raise Abort(f"no reply to marker {seq}: the stack stopped answering")

    def prime(self):
        """Puts the fake host into the stack's neighbour caches (ARP and NDP
        requests aimed at the stack fill them), checked with a ping each."""
        a = self.a
        for attempt in range(10):
            arp = ARP(op=1, hwsrc=FAKE_MAC, psrc=a.fake4, pdst=a.stack4)
            self.send_frame(bytes(arp), 0x0806)
            since = self.sn.mark()
            self.send(IP(src=a.fake4, dst=a.stack4) / ICMP(type=8, id=MARKER_ID, seq=60000 + attempt))
            if self.sn.wait_for(lambda s: s.get("kind") == "icmp:0/0" and s.get("id") == MARKER_ID, since, 1.0):
                break
        else:
            raise Abort("the stack never answered the fake host over IPv4")
        b = a.stack6_bytes
        snm = f"ff02::1:ff{b[13]:02x}:{b[14]:02x}{b[15]:02x}"
        for attempt in range(10):
            ns = ICMPv6ND_NS(tgt=a.stack6) / ICMPv6NDOptSrcLLAddr(lladdr=FAKE_MAC)
            self.send(IPv6(src=a.fake6, dst=snm, hlim=255) / ns)
            since = self.sn.mark()
            self.send(IPv6(src=a.fake6, dst=a.stack6) / ICMPv6EchoRequest(id=MARKER_ID, seq=attempt))
            if self.sn.wait_for(lambda s: s.get("kind") == "icmp6:129/0" and s.get("id") == MARKER_ID, since, 1.0):
                break
        else:
            raise Abort("the stack never answered the fake host over IPv6")

    # Cases ---------------------------------------------------------------

    def case(self, name, fn):
        n = len(self.cases) + 1
        c = {"name": name, "n": n, "port": BASE + n, "sent": {}, "facts": {}, "start": self.sn.mark()}
        self.cases.append(c)
        self.port = c["port"]
        began = time.monotonic()
        fn(c)
        self.port = 0
        self.marker()
        self.marker()
        c["end"] = self.sn.mark()
        c["ms"] = round((time.monotonic() - began) * 1000)
        print(json.dumps({"event": "case", "name": name}), flush=True)
        line = sys.stdin.readline()
        if line.strip() != "next":
            raise Abort(f"the test said {line!r} after case {name}")

    def attribute(self):
        """Matches every frame to the fake hosts with its case, by port."""
        a = self.a
        by_n = {c["n"]: c for c in self.cases}
        for c in self.cases:
            c.setdefault("replies", [])
        unmatched = []
        for s in self.sn.between(0):
            if s.get("dst") not in (a.fake4, a.fake6) or s.get("l3") == "arp":
                continue
            if s.get("type") in (133, 134, 135, 136, 137) or s.get("id") == MARKER_ID:
                continue
            q = s.get("quote", {})
            tagged = q.get("l3") == "ip6" and q.get("hlim", 0) > HLIM_BASE and BASE + q["hlim"] - HLIM_BASE
            key = s.get("dport") or s.get("id") or tagged or q.get("sport") or q.get("id")
            c = by_n.get((key or 0) - BASE)
            if c is None:
                unmatched.append(s)
            else:
                c["replies"].append(s)
        return unmatched


# ------------------------------------------------------------- stateless v4


def stateless_v4(r):
    a = r.a
    cases = []
    add = lambda name, fn: cases.append((name, fn))
    f4, s4 = a.fake4, a.stack4

    def udp_echo(c, **kw):
        payload = f"case {c['n']}".encode()
        c["sent"]["data"] = payload.hex()
        return udp_dgram(f4, s4, c["port"], a.echo_port, payload, **kw)

    def ip_bad_header_checksum(c):
        raw = bytearray(bytes(r.ip4(udp_echo(c), PROTO_UDP)))
        raw[10] ^= 0xFF
        r.send(raw)

    add("ip4_bad_header_checksum", ip_bad_header_checksum)
    add("udp4_bad_checksum", lambda c: r.send(r.ip4(udp_echo(c, checksum="bad"), PROTO_UDP)))
    add("udp4_zero_checksum", lambda c: r.send(r.ip4(udp_echo(c, checksum="zero"), PROTO_UDP)))

    def tcp_bad(opts):
        def run(c):
            seq = r.rng.getrandbits(32)
            c["sent"]["seq"] = seq
            r.send(r.ip4(tcp_seg(f4, s4, c["port"], a.closed_port, seq, 0, SYN, opts=opts, bad_csum=True), PROTO_TCP))

        return run

    add("tcp4_bad_checksum", tcp_bad(b""))
    add("tcp4_bad_checksum_syn_with_mss", tcp_bad(struct.pack("!BBH", 2, 4, 1460)))

    def icmp_bad(c):
        r.send(IP(src=f4, dst=s4) / ICMP(type=8, id=c["port"], seq=1, chksum=0xDEAD) / b"bad checksum")

    add("icmp4_bad_checksum", icmp_bad)

    def total_len(delta_or_value, absolute=False):
        def run(c):
            pkt = r.ip4(udp_echo(c), PROTO_UDP)
            real = len(bytes(pkt))
            pkt[IP].len = delta_or_value if absolute else real + delta_or_value
            r.send(pkt)

        return run

    add("ip4_total_length_past_frame", total_len(40))
    add("ip4_total_length_below_header", total_len(12, absolute=True))

    def ihl(values):
        def run(c):
            for v in values:
                r.send(r.ip4(udp_echo(c), PROTO_UDP, ihl=v))

        return run

    add("ip4_ihl_below_5", ihl([0, 1, 4]))

    def ihl_past_total(c):
        pkt = r.ip4(udp_echo(c), PROTO_UDP, ihl=15)
        raw = bytearray(bytes(pkt))
        r.send(raw)

    add("ip4_ihl_past_total_length", ihl_past_total)

    def version(c):
        raw = bytearray(bytes(r.ip4(udp_echo(c), PROTO_UDP)))
        raw[0] = 0x55
        r.send_frame(raw, 0x0800)

    add("ip4_version_5", version)

    def padding(c):
        raw = bytes(r.ip4(udp_echo(c), PROTO_UDP)) + b"\xee" * 30
        r.send_frame(raw, 0x0800)

    add("ip4_frame_padding_after_total_length", padding)

    def udp_len(length):
        def run(c):
            payload = b"udp length"
            c["sent"]["data"] = payload[: max(0, length - 8)].hex() if length else payload.hex()
            r.send(r.ip4(udp_dgram(f4, s4, c["port"], a.echo_port, payload, length=length), PROTO_UDP))

        return run

    add("udp4_length_past_payload", udp_len(100))
    add("udp4_length_below_header", udp_len(4))

    def udp_short(c):
        payload = b"echo"
        c["sent"]["data"] = payload.hex()
        d = udp_dgram(f4, s4, c["port"], a.echo_port, payload, extra=b"not-udp")
        r.send(r.ip4(d, PROTO_UDP))

    add("udp4_length_short_of_ip_payload", udp_short)

    def data_offset(off):
        def run(c):
            seq = r.rng.getrandbits(32)
            r.send(r.ip4(tcp_seg(f4, s4, c["port"], a.closed_port, seq, 0, SYN, dataofs=off), PROTO_TCP))

        return run

    add("tcp4_data_offset_below_5", data_offset(4))
    add("tcp4_data_offset_past_segment", data_offset(15))

    garbage = [
        bytes([99, 0]),  # unknown kind, length 0 (RFC 9293: must not loop)
        bytes([99, 1]),  # length 1
        bytes([2, 3, 5]),  # MSS of length 3
        bytes([3, 2]),  # window scale of length 2
        bytes([4, 3, 0]),  # SACK-permitted of length 3
        bytes([8, 40]) + bytes(6),  # timestamps running past the header
        bytes([1, 1, 1, 2]),  # NOPs, then a kind without a length byte
    ]

    def options_malformed(c):
        c["sent"]["count"] = len(garbage)
        for i, opts in enumerate(garbage):
            seq = r.rng.getrandbits(32)
            r.send(r.ip4(tcp_seg(f4, s4, c["port"], a.echo_port, seq, 0, SYN, opts=opts), PROTO_TCP))

    add("tcp4_options_malformed_syn_to_listener", options_malformed)

    def options_unknown(c):
        # Well-formed options of unknown kinds: to be ignored (RFC 9293 3.1).
        opts = bytes([1, 1, 99, 6, 1, 2, 3, 4, 253, 4, 0xAB, 0xCD]) + struct.pack("!BBH", 2, 4, 1400) + bytes([0, 7, 7, 7])
        seq = r.rng.getrandbits(32)
        c["sent"]["seq"] = seq
        since = r.sn.mark()
        r.send(r.ip4(tcp_seg(f4, s4, c["port"], a.echo_port, seq, 0, SYN, opts=opts), PROTO_TCP))
        sa = r.sn.wait_for(lambda s: s.get("dport") == c["port"] and s.get("flags") == "SA", since)
        if sa:
            # Abort the half-open connection (RST at exactly its RCV.NXT).
            r.send(r.ip4(tcp_seg(f4, s4, c["port"], a.echo_port, seq + 1, 0, RST), PROTO_TCP))
            c["facts"]["cleaned_up"] = True

    add("tcp4_options_unknown_syn_to_listener", options_unknown)

    def flags_to(port, flags, ack=0):
        def run(c):
            seq = r.rng.getrandbits(32)
            c["sent"].update(seq=seq, ack=ack)
            r.send(r.ip4(tcp_seg(f4, s4, c["port"], port, seq, ack, flags), PROTO_TCP))

        return run

    add("tcp4_syn_fin_to_listener", flags_to(a.echo_port, SYN | FIN))
    add("tcp4_syn_rst_to_listener", flags_to(a.echo_port, SYN | RST))
    add("tcp4_syn_to_closed_port", flags_to(a.closed_port, SYN))
    add("tcp4_ack_to_closed_port", flags_to(a.closed_port, ACK, ack=0x12345678))
    add("tcp4_rst_to_closed_port", flags_to(a.closed_port, RST))
    add("tcp4_no_flags_to_closed_port", flags_to(a.closed_port, 0))
    add("tcp4_syn_fin_to_closed_port", flags_to(a.closed_port, SYN | FIN))

    def udp_closed(c):
        c["sent"]["data"] = b"anyone?".hex()
        r.send(r.ip4(udp_dgram(f4, s4, c["port"], a.closed_port, b"anyone?"), PROTO_UDP))

    add("udp4_to_closed_port", udp_closed)

    def udp_broadcast_closed(c):
        # RFC 1122 3.2.2: no ICMP error for a datagram to a broadcast address.
        bcast = a.stack4.rsplit(".", 1)[0] + ".255"
        r.send(IP(src=f4, dst=bcast, proto=17) / Raw(udp_dgram(f4, bcast, c["port"], a.closed_port, b"anyone?")))

    add("udp4_broadcast_to_closed_port", udp_broadcast_closed)
    add("icmp4_echo", lambda c: r.send(IP(src=f4, dst=s4) / ICMP(type=8, id=c["port"], seq=7) / b"ping"))

    def icmp_errors_unrelated(c):
        # ICMP errors about datagrams and segments of connections that do not
        # exist: never answered (RFC 1122 3.2.2), nothing to act on.
        quoted_tcp = IPerror(src=s4, dst=f4, proto=6) / TCPerror(sport=a.echo_port, dport=c["port"], seq=1234)
        quoted_udp = IPerror(src=s4, dst=f4, proto=17) / UDPerror(sport=a.echo_port, dport=c["port"])
        for t, code, extra, q in [
            (3, 1, {}, quoted_tcp),
            (3, 3, {}, quoted_udp),
            (3, 4, {"nexthopmtu": 68}, quoted_tcp),
            (11, 0, {}, quoted_udp),
            (4, 0, {}, quoted_tcp),
            (5, 1, {"gw": f4}, quoted_tcp),
            (12, 0, {"ptr": 8}, quoted_udp),
        ]:
            r.send(IP(src=f4, dst=s4) / ICMP(type=t, code=code, **extra) / q)
        # ...and one quoting only 4 bytes of a header.
        r.send(IP(src=f4, dst=s4) / ICMP(type=3, code=3) / bytes(quoted_udp)[:4])
        c["sent"]["count"] = 8

    add("icmp4_errors_for_unknown_connections", icmp_errors_unrelated)

    def icmp_error_bad_checksum(c):
        q = IPerror(src=s4, dst=f4, proto=17) / UDPerror(sport=a.echo_port, dport=c["port"])
        r.send(IP(src=f4, dst=s4) / ICMP(type=3, code=3, chksum=0xBEEF) / q)

    add("icmp4_error_bad_checksum", icmp_error_bad_checksum)
    return cases


# ---------------------------------------------------------------- fragments


def fragments_v4(r):
    a = r.a
    cases = []
    add = lambda name, fn: cases.append((name, fn))
    f4, s4 = a.fake4, a.stack4

    def frag(ident, offset8, data, more, proto):
        return IP(src=f4, dst=s4, id=ident, proto=proto, flags="MF" if more else 0, frag=offset8) / Raw(data)

    def echo_in_two(c):
        body = bytes(ICMP(type=8, id=c["port"], seq=1) / (b"F" * 1000))
        r.send(frag(c["port"], 0, body[:512], True, PROTO_ICMP))
        r.send(frag(c["port"], 64, body[512:], False, PROTO_ICMP))
        c["sent"]["count"] = 2

    add("frag4_valid_echo_in_two_fragments", echo_in_two)

    def overlapping(c):
        payload = bytes(range(256)) * 2
        d = udp_dgram(f4, s4, c["port"], a.echo_port, payload)
        evil = bytearray(d)
        evil[300:400] = b"\xee" * 100
        r.send(frag(c["port"], 0, d[:256], True, PROTO_UDP))
        r.send(frag(c["port"], 24, bytes(evil[192:400]), True, PROTO_UDP))  # overlaps 192..256
        r.send(frag(c["port"], 32, d[256:], False, PROTO_UDP))  # overlaps 256..400
        c["sent"]["count"] = 3

    add("frag4_overlapping_udp", overlapping)

    def endless(c):
        # First and middle fragments of 150 datagrams that never complete.
        body = udp_dgram(f4, s4, c["port"], a.echo_port, bytes(2000))
        for i in range(150):
            r.send(frag((c["port"] + i) & 0xFFFF, 0, body[:800], True, PROTO_UDP))
            r.send(frag((c["port"] + i) & 0xFFFF, 100, body[800:1600], True, PROTO_UDP))
        c["sent"]["count"] = 300

    add("frag4_endless_never_completed", endless)

    def tiny_overwrite(c):
        # RFC 1858: a first fragment with only the ports, then a fragment
        # at offset 8 bytes carrying flags, as a filter evasion.
        seg = tcp_seg(f4, s4, c["port"], a.echo_port, r.rng.getrandbits(32), 0, SYN)
        r.send(frag(c["port"], 0, seg[:8], True, PROTO_TCP))
        r.send(frag(c["port"], 1, seg[8:], False, PROTO_TCP))
        c["sent"]["count"] = 2

    add("frag4_tiny_tcp_header", tiny_overwrite)
    return cases


# ---------------------------------------------------- the legitimate transfer


class Legit:
    """A kernel TCP connection to the sink, fed in chunks while cases run."""

    def __init__(self, r):
        a = r.a
        self.r = r
        self.data = open(a.legit, "rb").read()
        self.sent = 0
        self.sock = socket.create_connection((a.stack4, a.sink_port), timeout=30)
        self.port = self.sock.getsockname()[1]

    def feed(self, upto):
        if upto > self.sent:
            self.sock.sendall(self.data[self.sent:upto])
            self.sent = upto

    def wait_line(self):
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                raise Abort(f"the sink closed after {line!r}")
            line += chunk
        return line.decode().strip()


def fed(r, legit, cases, start, end):
    """Runs cases while legit bytes start..end go out in even chunks, each
    written by a thread while its case runs."""
    for i, (name, fn) in enumerate(cases):
        writer = threading.Thread(target=legit.feed, args=(start + (end - start) * (i + 1) // len(cases),))
        writer.start()
        r.case(name, fn)
        writer.join(30)
        if writer.is_alive():
            raise Abort(f"the legitimate upload stalled during {name}")
        c = r.cases[-1]
        c["facts"]["legit_acks"] = sum(
            1 for s in r.sn.between(c["start"], c["end"]) if s.get("sport") == r.a.sink_port and s.get("dport") == legit.port
        )


# ------------------------------------------- RFC 5961 on the still connection


def frozen_connection(r, legit):
    """RSTs, a SYN and ICMP errors aimed at the legitimate connection while
    its RCV.NXT stands still (the sink has read SYNC_AT bytes, the script
    sends nothing until this is over)."""
    a = r.a
    k4, s4, W = a.kernel4, a.stack4, a.rx_window
    lp = legit.port
    legit.feed(a.sync_at)
    line = legit.wait_line()
    if line != "sync":
        raise Abort(f"sink said {line!r} instead of sync")
    got = r.sn.wait_for(lambda s: s.get("sport") == a.sink_port and s.get("dport") == lp and s.get("data") == b"sync\n".hex(), 0)
    if got is None:
        raise Abort("never saw the sink's sync segment")
    rcv_nxt, snd_nxt = got["ack"], (got["seq"] + 5) & M32
    after_sync = got["i"] + 1

    def to_legit(seq, flags, ack=0):
        r.send(IP(src=k4, dst=s4, proto=6) / Raw(tcp_seg(k4, s4, lp, a.sink_port, seq, ack, flags)), src_mac=r.kernel_mac)

    def acks_in(c):
        return [
            s for s in r.sn.between(max(c["start"], after_sync), c["end"])
            if s.get("sport") == a.sink_port and s.get("dport") == lp and s.get("flags") == "A" and s.get("len") == 0
        ]

    def record(c):
        c["facts"]["acks"] = [{"ack": s["ack"], "seq": s["seq"], "win": s["win"]} for s in acks_in(c)]

    def wait_acks(c, n):
        """Waits (bounded) for n challenge ACKs, so that none of them can
        arrive after this case's last marker and count for the next."""
        is_ack = lambda s: s.get("sport") == a.sink_port and s.get("dport") == lp and s.get("flags") == "A"
        since = c["start"]
        for _ in range(n):
            got = r.sn.wait_for(is_ack, since, 2.0)
            if got is None:
                return
            since = got["i"] + 1

    def rsts(offsets, answered):
        def run(c):
            c["sent"].update(rcv_nxt=rcv_nxt, snd_nxt=snd_nxt, offsets=offsets)
            for off in offsets:
                to_legit(rcv_nxt + off, RST)
            wait_acks(c, len(offsets) if answered else 0)

        return run

    def syn(c):
        c["sent"].update(rcv_nxt=rcv_nxt)
        to_legit(r.rng.getrandbits(32), SYN)
        wait_acks(c, 1)

    # Out of window first: nothing earlier can be mistaken for its answer.
    cases = [
        ("legit_rst_out_of_window", rsts([-1, -100000, W, W + 100000], False)),
        ("legit_rst_in_window", rsts([1, W // 2, W - 1], True)),
        ("legit_syn_on_established", syn),
    ]

    def icmp_errors(c):
        q = IPerror(src=s4, dst=k4, proto=6) / TCPerror(sport=a.sink_port, dport=lp, seq=snd_nxt - 5, ack=rcv_nxt, flags="A")
        for src, t, code, extra in [
            (a.fake4, 3, 4, {"nexthopmtu": 68}),
            (a.fake4, 3, 1, {}),
            (k4, 3, 3, {}),
            (a.fake4, 11, 0, {}),
        ]:
            pkt = IP(src=src, dst=s4) / ICMP(type=t, code=code, **extra) / q
            r.send(pkt, src_mac=r.kernel_mac if src == k4 else FAKE_MAC)
        c["sent"]["count"] = 4

    cases.append(("legit_icmp_errors_quoting_it", icmp_errors))
    for name, fn in cases:
        r.case(name, fn)
        record(r.cases[-1])


def zero_window(r, stall):
    """Zero-window probes on the stalled connection (RFC 9293 3.8.6.1): the
    stack must answer with an ACK of RCV.NXT and window 0, and must not
    take the probe's byte."""
    a = r.a
    k4, s4 = a.kernel4, a.stack4
    sp = stall.getsockname()[1]
    zero = r.sn.wait_for(lambda s: s.get("sport") == a.stall_port and s.get("dport") == sp and s.get("win") == 0 and s.get("len") == 0, 0, 15)
    if zero is None:
        raise Abort("the stalled connection's window never closed")

    def run(c):
        # The latest ACK says where the window stands.
        last = [s for s in r.sn.between(0) if s.get("sport") == a.stall_port and s.get("dport") == sp]
        rcv_nxt, snd = last[-1]["ack"], last[-1]["seq"]
        c["sent"].update(rcv_nxt=rcv_nxt)
        start = r.sn.mark()
        for seq, payload in [(rcv_nxt, b"Z"), (rcv_nxt - 1, b"")]:
            seg = tcp_seg(k4, s4, sp, a.stall_port, seq, snd, ACK, payload=payload)
            r.send(IP(src=k4, dst=s4, proto=6) / Raw(seg), src_mac=r.kernel_mac)
        r.sn.wait_for(lambda s: s.get("sport") == a.stall_port and s.get("dport") == sp, start)
        c["facts"]["start"] = start

    r.case("zero_window_probes", run)
    c = r.cases[-1]
    c["facts"]["acks"] = [
        {"ack": s["ack"], "win": s["win"], "len": s["len"]}
        for s in r.sn.between(c["facts"].pop("start"), c["end"])
        if s.get("sport") == a.stall_port and s.get("dport") == sp
    ]


# ------------------------------------------------- connections from scapy


class Conn:
    """A TCP connection the script plays by hand from the fake host."""

    def __init__(self, r, v6, sport):
        a = r.a
        self.r, self.v6, self.sport, self.dport = r, v6, sport, a.echo_port
        self.src, self.dst = (a.fake6, a.stack6) if v6 else (a.fake4, a.stack4)
        self.snd_nxt = r.rng.getrandbits(32)
        self.rcv_nxt = None
        self.hbh = False

    def send(self, seq, flags, payload=b"", ack=None, opts=b"", bad_csum=False):
        ack = self.rcv_nxt if ack is None else ack
        seg = tcp_seg(self.src, self.dst, self.sport, self.dport, seq, ack or 0, flags, opts=opts, payload=payload, bad_csum=bad_csum)
        if self.v6 and self.hbh:
            pkt = IPv6(src=self.src, dst=self.dst) / IPv6ExtHdrHopByHop(nh=6, options=[PadN(optdata=b"\0\0\0\0")]) / Raw(seg)
        elif self.v6:
            pkt = IPv6(src=self.src, dst=self.dst, nh=6) / Raw(seg)
        else:
            pkt = IP(src=self.src, dst=self.dst, proto=6) / Raw(seg)
        self.r.send(pkt)

    def mine(self, s):
        return s.get("dport") == self.sport and s.get("src") == self.dst

    def connect(self):
        since = self.r.sn.mark()
        isn = self.snd_nxt
        self.send(isn, SYN, ack=0, opts=struct.pack("!BBH", 2, 4, 1400))
        sa = self.r.sn.wait_for(lambda s: self.mine(s) and s.get("flags") == "SA", since)
        if sa is None or sa["ack"] != (isn + 1) & M32:
            return False
        self.snd_nxt = (isn + 1) & M32
        self.rcv_nxt = (sa["seq"] + 1) & M32
        self.send(self.snd_nxt, ACK)
        return True

    def exchange(self, data):
        """Sends data, returns what the echo server sent back (acked)."""
        since = self.r.sn.mark()
        self.send(self.snd_nxt, PSH | ACK, payload=data)
        self.snd_nxt = (self.snd_nxt + len(data)) & M32
        got = b""
        i = since
        deadline = time.monotonic() + WAIT
        while len(got) < len(data) and time.monotonic() < deadline:
            s = self.r.sn.wait_for(lambda s: self.mine(s) and (s.get("len", 0) > 0 or "R" in s.get("flags", "")), i, deadline - time.monotonic())
            if s is None:
                break
            i = s["i"] + 1
            if "R" in s["flags"]:
                break
            if s["seq"] == self.rcv_nxt:
                got += bytes.fromhex(s["data"])[: s["len"]]
                self.rcv_nxt = (self.rcv_nxt + s["len"]) & M32
                self.send(self.snd_nxt, ACK)
        return got


def connection_cases(r, v6):
    a = r.a
    cases = []
    add = lambda name, fn: cases.append((name, fn))
    fam = "6" if v6 else "4"
    state = {}

    def open_conn(c):
        conn = Conn(r, v6, c["port"])
        state["conn"], state["port"] = conn, c["port"]
        c["facts"]["connected"] = conn.connect()
        c["facts"]["echo"] = conn.exchange(b"hello").decode(errors="replace")

    add(f"tcp{fam}_conn_open_and_echo", open_conn)

    def on_conn(fn, challenged=False):
        def run(c):
            conn = state["conn"]
            c["sent"].update(rcv_nxt=conn.snd_nxt, snd_nxt=conn.rcv_nxt, conn_port=state["port"])
            start = r.sn.mark()
            fn(c, conn)
            if challenged:
                # The challenge ACK carries RCV.NXT when it is sent: wait for
                # it before sending more (bounded; its absence fails later).
                ack = lambda s: conn.mine(s) and s.get("flags") == "A" and s.get("ack") == conn.snd_nxt
                r.sn.wait_for(ack, start, 2.0)
            c["facts"]["echo_after"] = conn.exchange(f"alive {c['n']}".encode()).decode(errors="replace")
            c["facts"]["conn_replies"] = [
                {"kind": s["kind"], "seq": s["seq"], "ack": s["ack"], "len": s["len"]}
                for s in r.sn.between(start) if conn.mine(s)
            ]

        return run

    def rst_at(offsets, hbh=False):
        def run(c, conn):
            conn.hbh = hbh
            for off in offsets:
                conn.send(conn.snd_nxt + off, RST, ack=0)
            conn.hbh = False

        return run

    if v6:
        # RFC 5961 must hold behind a Hop-by-Hop header too.
        add("tcp6_conn_in_window_rst_behind_hop_by_hop", on_conn(rst_at([1000], hbh=True), challenged=True))
    add(f"tcp{fam}_conn_in_window_rst", on_conn(rst_at([1000]), challenged=True))
    add(f"tcp{fam}_conn_out_of_window_rst", on_conn(rst_at([-5000, 1 << 20])))
    syn = lambda c, conn: conn.send(conn.snd_nxt + 77, SYN, ack=0)
    add(f"tcp{fam}_conn_syn_on_established", on_conn(syn, challenged=True))

    def bad_data(c, conn):
        # Data at exactly RCV.NXT with a bad checksum, then with garbage
        # options: neither may reach the echo server.
        conn.send(conn.snd_nxt, PSH | ACK, payload=b"EVIL1", bad_csum=True)
        conn.send(conn.snd_nxt, PSH | ACK, payload=b"EVIL2", opts=bytes([1, 99, 0, 0]))

    add(f"tcp{fam}_conn_corrupt_data", on_conn(bad_data))

    def exact_rst(c):
        conn = state["conn"]
        c["sent"].update(conn_port=state["port"], seq=conn.snd_nxt)
        # For diagnosis: RCV.NXT as the stack last acknowledged it.
        acked = [s["ack"] for s in r.sn.between(0) if conn.mine(s) and "A" in s.get("flags", "")]
        c["facts"]["last_ack_from_stack"] = acked[-1] if acked else None
        start = r.sn.mark()
        conn.send(conn.snd_nxt, RST, ack=0)
        # Anything after it must meet a closed port: RST, seq = our ACK.
        r.marker()
        conn.send(conn.snd_nxt, PSH | ACK, payload=b"after reset")
        c["sent"]["ack_after"] = conn.rcv_nxt
        r.sn.wait_for(lambda s: conn.mine(s) and "R" in s.get("flags", ""), start)
        c["facts"]["conn_replies"] = [
            {"kind": s["kind"], "seq": s["seq"], "ack": s["ack"], "len": s["len"]} for s in r.sn.between(start) if conn.mine(s)
        ]

    add(f"tcp{fam}_conn_exact_rst_resets", exact_rst)
    return cases


# ------------------------------------------------------------- stateless v6


def stateless_v6(r):
    a = r.a
    cases = []
    add = lambda name, fn: cases.append((name, fn))
    f6, s6 = a.fake6, a.stack6

    def echo6(c, **kw):
        payload = f"case {c['n']}".encode()
        c["sent"]["data"] = payload.hex()
        return udp_dgram(f6, s6, c["port"], a.echo_port, payload, **kw)

    def plain(**kw):
        return lambda c: r.send(r.ip6(echo6(c, **kw), PROTO_UDP))

    add("icmp6_echo", lambda c: r.send(IPv6(src=f6, dst=s6) / ICMPv6EchoRequest(id=c["port"], seq=1, data=b"ping6")))
    add("udp6_echo", plain())
    add("udp6_bad_checksum", plain(checksum="bad"))
    add("udp6_zero_checksum", plain(checksum="zero"))

    def tcp6(flags, port):
        def run(c):
            seq = r.rng.getrandbits(32)
            c["sent"]["seq"] = seq
            r.send(r.ip6(tcp_seg(f6, s6, c["port"], port, seq, 0, flags), PROTO_TCP))

        return run

    add("tcp6_syn_to_closed_port", tcp6(SYN, a.closed_port))
    add("tcp6_syn_fin_to_listener", tcp6(SYN | FIN, a.echo_port))

    def udp6_closed(c):
        r.send(r.ip6(udp_dgram(f6, s6, c["port"], a.closed_port, b"anyone?"), PROTO_UDP))

    add("udp6_to_closed_port", udp6_closed)

    def udp6_multicast_closed(c):
        # RFC 4443 2.4 (e.3): no error for a packet to a multicast address.
        d = udp_dgram(f6, "ff02::1", c["port"], a.closed_port, b"anyone?")
        r.send(IPv6(src=f6, dst="ff02::1", nh=17) / Raw(d))

    add("udp6_multicast_to_closed_port", udp6_multicast_closed)

    def udp6_closed_burst(c):
        # RFC 4443 2.4 (f): ICMPv6 error messages MUST be rate-limited.
        c["sent"]["count"] = 100
        for i in range(100):
            r.send(r.ip6(udp_dgram(f6, s6, c["port"], a.closed_port, b"burst %d" % i), PROTO_UDP))

    add("udp6_burst_to_closed_port", udp6_closed_burst)

    def payload_len(c):
        pkt = r.ip6(echo6(c), PROTO_UDP)
        pkt[IPv6].plen = len(bytes(pkt)) - 40 + 50
        r.send(pkt)

    add("ip6_payload_length_past_frame", payload_len)

    def wrong_ethertype(c):
        # A valid IPv6 UDP echo in a frame that says IPv4.
        r.send_frame(bytes(r.ip6(echo6(c), PROTO_UDP)), 0x0800)

    add("ip6_in_ipv4_ethertype", wrong_ethertype)

    def chain(*headers, nh_first, checksum="ok"):
        """IPv6 / headers... / UDP echo; headers are scapy extension
        headers with their nh set."""

        def run(c):
            d = echo6(c, checksum=checksum)
            pkt = IPv6(src=f6, dst=s6, nh=nh_first)
            for h in headers:
                pkt = pkt / h.copy()
            r.send(pkt / Raw(d))

        return run

    hbh = lambda nh=17, opts=None: IPv6ExtHdrHopByHop(nh=nh, options=opts or [PadN(optdata=b"\0\0\0\0")])
    dst = lambda nh=17: IPv6ExtHdrDestOpt(nh=nh, options=[PadN(optdata=b"\0\0\0\0")])
    unknown = lambda t: HBHOptUnknown(otype=t, optdata=b"\0\0\0\0")
    add("ip6_hop_by_hop_udp_echo", chain(hbh(), nh_first=0))
    add("ip6_hop_by_hop_udp_bad_checksum", chain(hbh(), nh_first=0, checksum="bad"))
    add("ip6_hop_by_hop_udp_zero_checksum", chain(hbh(), nh_first=0, checksum="zero"))
    add("ip6_hop_by_hop_unknown_option_skip", chain(hbh(opts=[unknown(0x1E)]), nh_first=0))
    add("ip6_hop_by_hop_unknown_option_discard", chain(hbh(opts=[unknown(0x5E)]), nh_first=0))
    add("ip6_hop_by_hop_unknown_option_param_problem", chain(hbh(opts=[unknown(0x9E)]), nh_first=0))
    pads = [PadN(optdata=b"")] * 4
    add("ip6_hop_by_hop_discard_option_after_four_pads", chain(hbh(opts=pads + [unknown(0x5E)]), nh_first=0))

    def hbh_truncated(c):
        ext = bytes([17, 3]) + bytes(6)  # claims 32 bytes, the packet ends after 8
        r.send(IPv6(src=f6, dst=s6, nh=0) / Raw(ext))

    add("ip6_hop_by_hop_truncated", hbh_truncated)
    add("ip6_hop_by_hop_not_first", chain(dst(nh=0), hbh(), nh_first=60))
    add("ip6_destination_options_udp_echo", chain(dst(), nh_first=60))
    add("ip6_routing_segments_left_0_udp_echo", chain(IPv6ExtHdrRouting(nh=17, type=0, segleft=0, addresses=[]), nh_first=43))
    add("ip6_routing_type_0_segments_left_1", chain(IPv6ExtHdrRouting(nh=17, type=0, segleft=1, addresses=[f6]), nh_first=43))
    add("ip6_atomic_fragment_udp_echo", chain(IPv6ExtHdrFragment(nh=17, offset=0, m=0, id=0x1234), nh_first=44))

    def fragments6(c):
        d = udp_dgram(f6, s6, c["port"], a.echo_port, bytes(1200))
        ident = c["port"]
        r.send(IPv6(src=f6, dst=s6, nh=44) / IPv6ExtHdrFragment(nh=17, offset=0, m=1, id=ident) / Raw(d[:600]))
        r.send(IPv6(src=f6, dst=s6, nh=44) / IPv6ExtHdrFragment(nh=17, offset=75, m=0, id=ident) / Raw(d[600:]))

    add("ip6_udp_echo_in_two_fragments", fragments6)
    add("ip6_long_destination_options_chain", chain(*[dst(nh=60) for _ in range(29)], dst(), nh_first=60))

    def no_next(c):
        r.send(IPv6(src=f6, dst=s6, nh=59) / Raw(udp_dgram(f6, s6, c["port"], a.echo_port, b"ignored")))

    add("ip6_no_next_header_with_bytes", no_next)

    def ptb(c):
        q = IPerror6(src=s6, dst=f6, nh=17) / UDPerror(sport=a.echo_port, dport=c["port"])
        r.send(IPv6(src=f6, dst=s6) / ICMPv6PacketTooBig(mtu=600) / q)
        r.send(IPv6(src=f6, dst=s6) / ICMPv6DestUnreach(code=4) / q)

    add("icmp6_errors_for_unknown_datagrams", ptb)
    return cases


# --------------------------------------------------------------- the end


def final_echoes(a):
    """A fresh TCP and UDP echo over both families after the barrage."""
    out = {}
    rng = random.Random(7)
    for fam, host in (("4", a.stack4), ("6", a.stack6)):
        data = rng.randbytes(64 * 1024)
        with socket.create_connection((host, a.echo_port), timeout=10) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        out["tcp" + fam] = got == data
        af = socket.AF_INET6 if fam == "6" else socket.AF_INET
        with socket.socket(af, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            ok = True
            for i in range(3):
                msg = rng.randbytes(100 + i)
                u.sendto(msg, (host, a.echo_port))
                try:
                    ok &= u.recvfrom(2048)[0] == msg
                except socket.timeout:
                    ok = False
            out["udp" + fam] = ok
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("iface", "stack-mac", "stack4", "stack6", "kernel4", "fake4", "fake6", "legit", "stall"):
        p.add_argument("--" + name, required=True)
    for name in ("echo-port", "sink-port", "stall-port", "closed-port", "sync-at", "rx-window"):
        p.add_argument("--" + name, required=True, type=int)
    p.add_argument("--stacks-after", type=float, default=45, help="print every thread's stack after this many seconds")
    a = p.parse_args()
    faulthandler.dump_traceback_later(a.stacks_after, exit=False)
    a.stack6_bytes = socket.inet_pton(socket.AF_INET6, a.stack6)
    a.fake6_bytes = socket.inet_pton(socket.AF_INET6, a.fake6)
    try:
        r = Run(a)
        r.prime()
        legit = Legit(r)
        stall = socket.create_connection((a.stack4, a.stall_port), timeout=30)
        stall_data = open(a.stall, "rb").read()

        def stall_writer():
            stall.sendall(stall_data)
            stall.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=stall_writer, daemon=True)
        writer.start()
        half = a.sync_at
        fed(r, legit, stateless_v4(r), 0, half * 2 // 3)
        fed(r, legit, fragments_v4(r), half * 2 // 3, half)
        frozen_connection(r, legit)
        zero_window(r, stall)
        rest = len(legit.data) - half
        fed(r, legit, connection_cases(r, False), half, half + rest // 4)
        fed(r, legit, connection_cases(r, True), half + rest // 4, half + rest // 2)
        fed(r, legit, stateless_v6(r), half + rest // 2, len(legit.data))
        legit.sock.shutdown(socket.SHUT_WR)
        sink_said = legit.wait_line()
        writer.join(30)
        echoes = final_echoes(a)
        r.marker()
        r.marker()
        unmatched = r.attribute()
        report = {
            "event": "report",
            "legit_port": legit.port,
            "legit_sent": legit.sent,
            "sink_said": sink_said,
            "stall_written": not writer.is_alive(),
            "final_echo": echoes,
            "unmatched": unmatched,
            "frames_seen": r.sn.mark(),
            "cases": [{k: v for k, v in c.items() if k not in ("start", "end")} for c in r.cases],
        }
        print(json.dumps(report), flush=True)
    except (Abort, OSError) as e:
        print(json.dumps({"event": "error", "error": f"{type(e).__name__}: {e}"}), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
