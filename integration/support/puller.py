#!/usr/bin/env python3
"""A stranger posing as nodes that pull from upstream caches, for the pull
tests. It tells the node at ADDR, over UDP (port 12304), that COUNT made-up
nodes at this address pull (one `pulls` datagram each, again every 0.5 s,
so they stay live), their node ids picked to rank before NODE (the node's
own id, hex) for every hash part of HASHES (comma-separated), as a node
ranks pullers: the first 8 bytes of SHA-256(node id, big-endian, then the
hash part), the larger first. Then it answers their HTTP port PORT:

    puller.py lie ADDR NODE HASHES COUNT PORT LOG NAR...
        every /peer/pull/ request for a path whose NAR is given (NAR
        arguments are HASH=FILE) gets that NAR whole (Range honoured) with
        its last byte flipped: right length, wrong NarHash; others 404
    puller.py silent ADDR NODE HASHES COUNT PORT LOG
        accepts every connection and never answers

Each connection is a line "connection" in LOG, each request a line
"GET <path>".
"""

import hashlib
import http.server
import os
import socket
import struct
import sys
import threading
import time

UDP_PORT = 12304


def score(node, hash_part):
    digest = hashlib.sha256(struct.pack(">Q", node) + hash_part.encode()).digest()
    return struct.unpack(">Q", digest[:8])[0]


def made_up_ids(beat, hashes, count):
    """COUNT random ids that each rank before `beat` for every hash."""
    ids = []
    while len(ids) < count:
        node = struct.unpack(">Q", os.urandom(8))[0]
        if all(score(node, h) > score(beat, h) for h in hashes):
            ids.append(node)
    return ids


def announce(addr, ids, port):
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        for node in ids:
            datagram = b"PX\x02\x06" + struct.pack(">Q", node) + b"\0\0\0\0" + struct.pack(">H", port)
            try:
                s.sendto(datagram, (addr, UDP_PORT))
            except OSError:
                pass
        time.sleep(0.5)


def main():
    mode, addr, beat, hashes, count, port, log_path = sys.argv[1:8]
    beat, count, port = int(beat, 16), int(count), int(port)
    nars = dict(a.split("=", 1) for a in sys.argv[8:])
    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()

    def record(line):
        with lock:
            log.write(line + "\n")

    ids = made_up_ids(beat, hashes.split(","), count)
    threading.Thread(target=announce, args=(addr, ids, port), daemon=True).start()
    print("announced %d ids" % len(ids), flush=True)

    if mode == "silent":
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(64)
        held = []
        while True:
            c, _ = server.accept()
            record("connection")
            held.append(c)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            record("connection")

        def do_GET(self):
            record("GET " + self.path)
            name = self.path.rsplit("/", 1)[-1]
            hash_part = name[:-len(".nar")].rsplit("-", 1)[-1] if name.endswith(".nar") else ""
            if not self.path.startswith("/peer/pull/") or hash_part not in nars:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            with open(nars[hash_part], "rb") as f:
                nar = bytearray(f.read())
            nar[-1] ^= 0xFF
            size = len(nar)
            start = 0
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes=") and wanted.endswith("-"):
                start = min(int(wanted[len("bytes="):-1]), size)
            if start:
                self.send_response(206)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            try:
                self.wfile.write(bytes(nar[start:]))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) < 8 or sys.argv[1] not in ("lie", "silent"):
        sys.exit(__doc__)
    main()
