#!/usr/bin/env python3
"""Readiness under the LD_PRELOAD shim: select, poll and epoll over plebnet
TCP and UDP sockets mixed with a pipe and a Unix socket pair.

Run as `plebnet run ... -- python3 readiness.py OVERLAY_IP`; OVERLAY_IP is
the process's own overlay address, so every plebnet socket talks to the
same stack (plebnet loopback). Prints "ok" and exits 0 when every
readiness and every address is right; any mismatch raises.
"""
import errno
import os
import select
import socket
import sys

WAIT = 5.0  # seconds a "becomes ready" may take (the pumps are threads)


def ready_select(fds):
    r, w, _ = select.select(fds, fds, [], 0)
    return set(r), set(w)


def ready_poll(fds):
    p = select.poll()
    for f in fds:
        p.register(f, select.POLLIN | select.POLLOUT)
    r, w = set(), set()
    for f, ev in p.poll(0):
        if ev & select.POLLIN:
            r.add(f)
        if ev & select.POLLOUT:
            w.add(f)
    return r, w


def ready_epoll(fds):
    e = select.epoll()
    for f in fds:
        e.register(f, select.EPOLLIN | select.EPOLLOUT)
    r, w = set(), set()
    for f, ev in e.poll(0):
        if ev & select.EPOLLIN:
            r.add(f)
        if ev & select.EPOLLOUT:
            w.add(f)
    e.close()
    return r, w


MECHANISMS = [("select", ready_select), ("poll", ready_poll), ("epoll", ready_epoll)]


def wait_readable(fd):
    """Blocks (bounded) until fd is readable, with epoll."""
    e = select.epoll()
    e.register(fd, select.EPOLLIN)
    got = e.poll(WAIT)
    e.close()
    assert got, f"fd {fd} did not become readable within {WAIT}s"


def check(step, fds, names, readable, writable):
    for mech, fn in MECHANISMS:
        r, w = fn(fds)
        want_r = {f for f in fds if names[f] in readable}
        want_w = {f for f in fds if names[f] in writable}
        if r != want_r or w != want_w:
            show = lambda s: sorted(names[f] for f in s)
            raise AssertionError(
                f"{step} / {mech}: readable {show(r)} expected {show(want_r)}; "
                f"writable {show(w)} expected {show(want_w)}"
            )


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "unexpected EOF"
        out += chunk
    return out


def main():
    ip = sys.argv[1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    assert listener.getsockname()[0] == ip, listener.getsockname()

    pr, pw = os.pipe()
    ua, ub = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    u1 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u1.bind((ip, 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.bind((ip, 0))

    names = {listener.fileno(): "listener", pr: "pipe_r", pw: "pipe_w", ua.fileno(): "unix_a",
             ub.fileno(): "unix_b", u1.fileno(): "udp1", u2.fileno(): "udp2"}
    fds = list(names)
    writable_base = {"pipe_w", "unix_a", "unix_b", "udp1", "udp2"}
    check("idle", fds, names, set(), writable_base)

    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.connect((ip, port))
    assert client.getpeername() == (ip, port), client.getpeername()
    wait_readable(listener.fileno())
    check("pending connection", fds, names, {"listener"}, writable_base)
    server, peer = listener.accept()
    assert peer == client.getsockname(), (peer, client.getsockname())
    assert server.getsockname() == (ip, port)
    assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
    names[client.fileno()] = "client"
    names[server.fileno()] = "server"
    fds = list(names)
    writable_base |= {"client", "server"}
    check("connected", fds, names, set(), writable_base)

    # One event at a time, then all at once.
    client.sendall(b"hello")
    wait_readable(server.fileno())
    check("tcp data", fds, names, {"server"}, writable_base)
    assert read_exact(server, 5) == b"hello"
    check("tcp drained", fds, names, set(), writable_base)

    os.write(pw, b"p")
    ub.sendall(b"u")
    u1.sendto(b"datagram", u2.getsockname())
    server.sendall(b"back")
    for f in (pr, ua.fileno(), u2.fileno(), client.fileno()):
        wait_readable(f)
    check("all at once", fds, names, {"pipe_r", "unix_a", "udp2", "client"}, writable_base)
    assert os.read(pr, 1) == b"p"
    assert ua.recv(1) == b"u"
    data, src = u2.recvfrom(100)
    assert (data, src) == (b"datagram", u1.getsockname()), (data, src, u1.getsockname())
    assert read_exact(client, 4) == b"back"
    check("all drained", fds, names, set(), writable_base)

    # A half-close reads as EOF (readable), the other direction still works.
    client.shutdown(socket.SHUT_WR)
    wait_readable(server.fileno())
    check("half-closed", fds, names, {"server"}, writable_base)
    assert server.recv(10) == b""
    server.sendall(b"after")
    assert read_exact(client, 5) == b"after"

    # Non-blocking connect: EINPROGRESS, writable when up, SO_ERROR 0.
    nb = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    nb.setblocking(False)
    rc = nb.connect_ex((ip, port))
    assert rc in (errno.EINPROGRESS, 0), rc
    _, w, _ = select.select([], [nb], [], WAIT)
    assert w, "non-blocking connect never became writable"
    assert nb.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    acc, _ = listener.accept()

    # Refused (no listener on that port): SO_ERROR says so.
    bad = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    bad.setblocking(False)
    bad.connect_ex((ip, port + 1 if port < 65535 else port - 1))
    _, w, _ = select.select([], [bad], [], WAIT)
    assert w, "refused connect never became writable"
    err = bad.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert err == errno.ECONNREFUSED, os.strerror(err)

    # Unsupported things: precise errno, the program carries on.
    try:
        client.setsockopt(socket.IPPROTO_TCP, 9999, 1)
        raise AssertionError("unknown TCP option accepted")
    except OSError as e:
        assert e.errno == errno.ENOPROTOOPT, e
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        raise AssertionError("AF_PACKET socket created")
    except OSError as e:
        assert e.errno == errno.EAFNOSUPPORT, e

    for s in (nb, acc, bad, client, server, listener, u1, u2, ua, ub):
        s.close()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
