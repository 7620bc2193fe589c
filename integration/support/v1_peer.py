#!/usr/bin/env python3
"""A stand-in for a node running the original Peerix (v1), for the tests.

It speaks exactly the v1 wire format of ../shared/peerix-v1-wire.md and
nothing else: no extension, silence on a miss.

    v1_peer.py serve CACHE_DIR PORT [--garbage] [--delay MS] [--set 'NAME: VALUE']...
                     [--tail N,M,...] [--trickle AFTER SECONDS]
        Answers v1 requests for the paths of CACHE_DIR (a `nix copy --to
        file://CACHE_DIR?compression=none` cache) and serves them on
        /local/<hash>.narinfo and /local/nar/<b64>.nar, chunked and without
        Content-Length, as the original does. With --garbage it claims to
        have every path and serves text that is not a narinfo. --delay
        answers each request MS milliseconds late (a busy or far peer).
        --set replaces the field NAME of every narinfo it serves (or adds
        it): fields the signature does not cover, such as CA or Compression,
        so that the narinfo stays validly signed. --tail sends the last
        N + M + ... bytes of a NAR as chunks of their own, of N, M, ...
        bytes, 0.2 s apart. --trickle sends the first AFTER bytes of a NAR
        at once, then one byte every SECONDS (a peer just fast enough for
        curl's low-speed limit).

    v1_peer.py query HASH ADDRESS PORT
        Sends one v1 request for HASH to ADDRESS:PORT (a broadcast address
        or a host), waits 2 s for the first reply, fetches the narinfo the
        reply names and the NAR its URL names, and prints
        `narinfo <status>`, the narinfo text, then `nar <sha256> <length>`.
        Exits 1 when nobody answers.
"""

import base64
import hashlib
import http.server
import os
import socket
import struct
import sys
import threading
import time
import urllib.request


def send_nar(wfile, path, tail, trickle):
    """The NAR in `path` as a chunked body, shaped by --tail and --trickle."""
    def chunk(data):
        wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    size = os.path.getsize(path)
    plain = size - sum(tail)
    if trickle:
        plain = min(plain, trickle[0])
    sent = 0
    with open(path, "rb") as f:
        while sent < plain:
            data = f.read(min(65536, plain - sent))
            if not data:
                break
            chunk(data)
            sent += len(data)
        for n in tail:
            time.sleep(0.2)
            chunk(f.read(n))
        while trickle:
            data = f.read(1)
            if not data:
                break
            time.sleep(trickle[1])
            chunk(data)
    wfile.write(b"0\r\n\r\n")


def serve(cache, port, garbage, delay, fields, tail=(), trickle=None):
    def narinfo_text(hash_part):
        try:
            with open(os.path.join(cache, hash_part + ".narinfo")) as f:
                return f.read()
        except OSError:
            return None

    def store_path(text):
        for line in text.splitlines():
            if line.startswith("StorePath: "):
                return line[len("StorePath: "):]
        return None

    def udp(sock):
        while True:
            data, addr = sock.recvfrom(2048)
            if len(data) != 37 or data[0] != 0:
                continue
            request_id = data[1:5]
            hash_part = data[5:37].decode("ascii", "replace")
            if garbage or narinfo_text(hash_part) is not None:
                reply = (b"\x01" + request_id + struct.pack(">I", port)
                         + ("local/%s.narinfo" % hash_part).encode())
                if delay:
                    threading.Timer(delay / 1000, sock.sendto, (reply, addr)).start()
                else:
                    sock.sendto(reply, addr)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path
            if path.startswith("/local/nar/") and path.endswith(".nar"):
                b64 = path[len("/local/nar/"):-len(".nar")]
                wanted = base64.b64decode(b64.replace("_", "/")).decode()
                for name in os.listdir(cache):
                    if not name.endswith(".narinfo"):
                        continue
                    text = narinfo_text(name[:-len(".narinfo")])
                    if store_path(text) != wanted:
                        continue
                    url = [l[5:] for l in text.splitlines() if l.startswith("URL: ")][0]
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        send_nar(self.wfile, os.path.join(cache, url), tail, trickle)
                    except OSError:
                        pass  # the client left
                    return
            elif path.startswith("/local/") and path.endswith(".narinfo"):
                hash_part = path[len("/local/"):-len(".narinfo")]
                text = "this is not a narinfo\n" if garbage else narinfo_text(hash_part)
                if text is not None:
                    if not garbage:
                        b64 = base64.b64encode(store_path(text).encode()).decode()
                        lines = [("URL: local/nar/%s.nar" % b64.replace("/", "_"))
                                 if l.startswith("URL: ") else l
                                 for l in text.splitlines()]
                        for field in fields:
                            name = field.split(":", 1)[0] + ":"
                            lines = [l for l in lines if not l.startswith(name)] + [field]
                        text = "\n".join(lines) + "\n"
                    body = text.encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/x-nix-narinfo")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    udp_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    udp_socket.bind(("0.0.0.0", port))
    threading.Thread(target=udp, args=(udp_socket,), daemon=True).start()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print("v1 peer serving %s on port %d" % (cache, port), flush=True)
    server.serve_forever()


def query(hash_part, address, port, request_id=4242):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    try:
        sock.bind(("0.0.0.0", port))
    except OSError:
        sock.bind(("0.0.0.0", 0))  # a v1 peer serves on this host: answers come back here
    sock.settimeout(2.0)
    sock.sendto(b"\x00" + struct.pack(">I", request_id) + hash_part.encode(),
                (address, port))
    own = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)}
    while True:
        try:
            data, addr = sock.recvfrom(2048)
        except socket.timeout:
            print("no answer")
            sys.exit(1)
        if addr[0] in own or len(data) < 9 or data[0] != 1:
            continue
        if struct.unpack(">I", data[1:5])[0] != request_id:
            continue
        http_port = struct.unpack(">I", data[5:9])[0]
        url = data[9:].decode()
        base = "http://%s:%d/" % (addr[0], http_port)
        with urllib.request.urlopen(base + url, timeout=5) as r:
            text = r.read().decode()
            print("narinfo %d" % r.status)
            print(text, end="")
        nar_url = [l[5:] for l in text.splitlines() if l.startswith("URL: ")][0]
        with urllib.request.urlopen(base + nar_url, timeout=30) as r:
            data = r.read()
            print("nar %s %d" % (hashlib.sha256(data).hexdigest(), len(data)))
        return


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        options = sys.argv[4:]
        delay, fields, tail, trickle = 0, [], (), None
        for i, option in enumerate(options):
            if option == "--delay":
                delay = int(options[i + 1])
            elif option == "--set":
                fields.append(options[i + 1])
            elif option == "--tail":
                tail = tuple(int(n) for n in options[i + 1].split(","))
            elif option == "--trickle":
                trickle = (int(options[i + 1]), float(options[i + 2]))
        serve(sys.argv[2], int(sys.argv[3]), "--garbage" in options, delay, fields,
              tail, trickle)
    elif sys.argv[1] == "query":
        # --id N: the request id (ours set its top bit; the original counts from 0)
        extra = sys.argv[5:]
        request_id = int(extra[extra.index("--id") + 1]) if "--id" in extra else 4242
        query(sys.argv[2], sys.argv[3], int(sys.argv[4]), request_id)
    else:
        sys.exit(__doc__)
