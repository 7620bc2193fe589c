#!/usr/bin/env python3
"""A stand-in for an upstream binary cache (cache.nixos.org) in tests and
the benchmark: serves a directory made with `nix copy --to file://DIR?...`
over HTTPS (or HTTP without --cert), one thread per connection, with
`Range: bytes=N-`, and logs every answer as one line

    <path> <status> <bytes of the body sent>

to --log, so a test can tell how often each NAR crossed the "internet".
A file with a sibling FILE.corrupt-once is sent once with its middle byte
flipped (the sibling is removed): one bad answer, as a test asks for it.

    upstream_cache.py --dir DIR --port 8443 --log FILE [--cert PEM --key PEM]
"""

import argparse
import http.server
import os
import ssl
import sys
import threading

CHUNK = 64 * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    root = os.path.realpath(args.dir)
    log = open(args.log, "a", buffering=1)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The head and the body are separate writes: without this, a small
        # body waits for the client's delayed ACK (40 ms a request).
        disable_nagle_algorithm = True

        def setup(self):
            # The TLS handshake in this connection's thread, not in the
            # accepting one: clients' handshakes are not queued behind
            # each other.
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(30)
                try:
                    self.request.do_handshake()
                except (OSError, ssl.SSLError):
                    pass
            super().setup()

        def record(self, status, sent):
            with lock:
                log.write(f"{self.path} {status} {sent}\n")

        def do_HEAD(self):
            self.answer(body=False)

        def do_GET(self):
            self.answer(body=True)

        def answer(self, body):
            path = os.path.realpath(os.path.join(root, self.path.split("?")[0].lstrip("/")))
            if not path.startswith(root + os.sep) or not os.path.isfile(path):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return self.record(404, 0)
            size = os.path.getsize(path)
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-"):
                try:
                    start = int(wanted[len("bytes="):-1])
                except ValueError:
                    start = 0
            start = min(start, size)
            if start:
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            sent = 0
            status = 206 if start else 200
            flip = None
            if body:
                try:
                    os.remove(path + ".corrupt-once")
                    flip = size // 2
                except OSError:
                    pass
            if body:
                try:
                    with open(path, "rb") as f:
                        f.seek(start)
                        while True:
                            at = f.tell()
                            chunk = f.read(CHUNK)
                            if not chunk:
                                break
                            if flip is not None and at <= flip < at + len(chunk):
                                chunk = bytearray(chunk)
                                chunk[flip - at] ^= 0xFF
                                chunk = bytes(chunk)
                            self.wfile.write(chunk)
                            sent += len(chunk)
                except OSError:  # the client left (ssl.SSLError is one too)
                    pass
            self.record(status, sent)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler)
    server.daemon_threads = True
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    print(f"serving {root} on port {args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
