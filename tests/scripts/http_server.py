#!/usr/bin/env python3
"""A kernel-side HTTP/1.1 server for interop tests: Python's http.server
serving a directory (GET), plus PUT uploads stored in that directory and
answered with the sha256 of what arrived.

Usage: http_server.py --bind ADDR --port PORT --dir DIR
Prints "ready <port>" on stdout once it listens (tests wait for that line
instead of sleeping). Stops when stdin closes, so it never outlives the test.
"""
import argparse
import functools
import hashlib
import http.server
import os
import socket
import sys
import threading


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self):
        length = int(self.headers.get("Content-Length", "0"))
        name = os.path.basename(self.path.strip("/")) or "upload"
        digest = hashlib.sha256()
        left = length
        with open(os.path.join(self.directory, name), "wb") as out:
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
        body = (digest.hexdigest() + "\n").encode()
        self.send_response(201 if left == 0 else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--dir", required=True)
    a = p.parse_args()
    family = socket.AF_INET6 if ":" in a.bind else socket.AF_INET

    class Server(http.server.ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    server = Server((a.bind, a.port), functools.partial(Handler, directory=a.dir))
    print("ready", server.server_address[1], flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()  # until the test closes our stdin (or dies)
    server.shutdown()


if __name__ == "__main__":
    main()
