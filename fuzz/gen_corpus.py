#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ (rerun after changing it; the
fuzzer's own finds go to target/fuzz/corpus/, never here)."""
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# cell_decoder: [split_seed, max_var (u16 BE), buffered_k, stream...]
def fixed(circ, cmd, payload=b""):
    return struct.pack(">IB", circ, cmd) + payload.ljust(509, b"\0")


def var(circ, cmd, payload):
    return struct.pack(">IBH", circ, cmd, len(payload)) + payload


versions = var(0, 7, b"\x00\x04\x00\x05")
certs = var(0, 129, b"\x01\x02" + b"c" * 20)
write("cell_decoder", "versions_certs", b"\x01\xff\xff\x00" + versions + certs)
write("cell_decoder", "fixed_then_var", b"\x07\x01\x00\x00" + fixed(1, 3, b"create2") + var(0, 128, b""))
write("cell_decoder", "oversized", b"\x02\x00\x10\x00" + var(0, 130, b"x" * 17))
write("cell_decoder", "truncated", b"\x03\xff\xff\x00" + fixed(5, 9)[:300])
write("cell_decoder", "small_buffer", b"\x09\x00\x40\x01" + var(1, 131, b"p" * 60) * 3)

# config_parser: the example configs, plus a minimal one.
for name in sorted(os.listdir(os.path.join(HERE, "..", "configs"))):
    shutil.copy(os.path.join(HERE, "..", "configs", name), os.path.join(HERE, "corpus", "config_parser", name))
write("config_parser", "bad_value.toml", b'[[interface]]\nkind = "udp"\nmtu = "big"\n')


# stack_ingress: packets as [len (u16 BE), bytes...], to 10.7.0.1 from 10.7.0.2.
def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(">%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


SRC, DST = bytes([10, 7, 0, 2]), bytes([10, 7, 0, 1])


def ipv4(proto, payload):
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, SRC, DST)
    return hdr[:10] + struct.pack(">H", csum(hdr)) + hdr[12:] + payload


def l4(proto, seg, ck_at):
    pseudo = SRC + DST + struct.pack(">BBH", 0, proto, len(seg))
    c = csum(pseudo + seg)
    return ipv4(proto, seg[:ck_at] + struct.pack(">H", c) + seg[ck_at + 2:])


def udp(dport, payload):
    return l4(17, struct.pack(">HHHH", 4000, dport, 8 + len(payload), 0) + payload, 6)


def tcp(dport, flags, seq=1000, ack=0, payload=b""):
    return l4(6, struct.pack(">HHIIBBHHH", 4001, dport, seq, ack, 5 << 4, flags, 8192, 0, 0) + payload, 16)


def icmp_echo():
    body = struct.pack(">BBHHH", 8, 0, 0, 1, 1) + b"ping"
    return ipv4(1, body[:2] + struct.pack(">H", csum(body)) + body[4:])


def packets(*ps):
    return b"".join(struct.pack(">H", len(p)) + p for p in ps)


write("stack_ingress", "udp", packets(udp(7, b"hello")))
write("stack_ingress", "tcp_syn_ack", packets(tcp(80, 0x02), tcp(80, 0x10, 1001, 1), tcp(80, 0x18, 1001, 1, b"data")))
write("stack_ingress", "tcp_closed_port", packets(tcp(81, 0x02)))
write("stack_ingress", "icmp_echo", packets(icmp_echo()))
write("stack_ingress", "ipv6_junk", packets(bytes([0x60]) + bytes(39), b"\x45\x00"))


# tunnel_core: operations [op, arg, ...] (see fuzz_targets/tunnel_core.rs).
def seq_op(leg, kind, stream, n):
    return bytes([1, leg, kind, stream, n])


begin_data = seq_op(0, 0, 1, 16) + seq_op(0, 1, 1, 20) + seq_op(1, 1, 1, 3)
write("tunnel_core", "begin_data_switch", begin_data + bytes([1, 2, 2, 0, 5]) + bytes([3, 40, 4, 0]))
write("tunnel_core", "switch_zero_twice", bytes([0, 0, 3, 4, 0, 0, 0, 0, 0, 1, 3, 4, 0, 0, 0, 1, 0, 1, 3, 4, 0, 0, 0, 1]))
write("tunnel_core", "timers", begin_data + bytes([2, 250, 4, 0, 2, 255, 2, 255, 3, 8]))
write("tunnel_core", "resend_dup", seq_op(0, 0, 1, 4) + bytes([1, 1, 1, 1, 1]) * 3 + bytes([0, 2, 6, 16]) + bytes(16))
