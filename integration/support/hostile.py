#!/usr/bin/env python3
"""Hostile clients for the trust tests: each runs for a bounded time or
count, against one address of a test host, and prints what it did.

    hostile.py udp-garbage ADDR PORT COUNT
        random, truncated and look-alike datagrams (v1 and v2 shapes)
    hostile.py query-flood ADDR PORT SECONDS
        well-formed v2 queries as fast as it can; prints how many it sent
        and how many answers came back
    hostile.py slowloris ADDR PORT CONNECTIONS SECONDS
        opens connections and sends a request head a byte at a time, never
        finishing it; prints how many the server closed by itself
    hostile.py http-junk ADDR PORT
        oversized and malformed requests; prints each status line received
    hostile.py pipeline ADDR PORT CONNECTIONS COUNT FIRST_PATH SECONDS
        opens connections, sends on each a GET of FIRST_PATH (a NAR) and
        then COUNT pipelined GETs, never reads, and holds them open for
        SECONDS; prints how many it opened and how many requests it sent
    hostile.py hold ADDR PORT COUNT SECONDS [EVERY [SOURCES]]
        opens up to COUNT connections and holds them for SECONDS; prints
        how many it opened, and at the end how many the server closed.
        With EVERY > 0, each connection sends a request head every EVERY
        seconds (reading nothing back); SOURCES, a comma-separated list of
        local addresses, spreads the connections over them
    hostile.py slow-read ADDR PORT CONNECTIONS PATH RATE SECONDS
        opens CONNECTIONS connections with a small receive buffer, sends
        on each a GET of PATH (a large NAR), and reads RATE bytes a second
        of each for SECONDS; prints how many it opened, and at the end how
        many got a 200 head
    hostile.py leave ADDR PORT PATH BYTES
        GETs PATH with a small receive buffer, reads BYTES of the reply and
        closes the connection; prints how many bytes it read
    hostile.py body ADDR PORT HEAD
        sends HEAD (with \r\n written as the two characters \\r\\n)
        and prints the status line received, whether the server then closed
        the connection ("closed" or "open" after 3 s), and how long it took
    hostile.py spoof ADDR PORT COUNT
        v2 datagrams from made-up nodes (a random node id each): hellos
        asking for one back, "have" answers and queries for random hashes
    hostile.py pull-flood ADDR PORT COUNT
        COUNT GETs of /peer/pull/<NarHash>-<hash>.nar for random hashes and
        NarHashes, as fast as it can on keep-alive connections; prints how
        many got each status ("404 N 503 M")
    hostile.py listen PORT FILE SECONDS
        a TCP listener that appends a line to FILE for each connection
        (to see that nothing reaches it)
    hostile.py peers ADDR PORT ENTRY...
        a v2 peer list from a made-up node, sent twice, naming each ENTRY
        (IPV4:PORT) as a peer it heard from
    hostile.py udp-listen PORTS FILE SECONDS
        UDP listeners on the comma-separated PORTS that append a line to
        FILE for each datagram: the port, the address it was sent to
        (unicast or broadcast), the sender and the v2 kind (or -)
"""

import os
import random
import socket
import struct
import sys
import time


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def udp_garbage(addr, port, count):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    nix32 = b"0123456789abcdfghijklmnpqrsvwxyz"
    for i in range(count):
        kind = i % 5
        if kind == 0:
            data = os.urandom(random.randrange(0, 200))
        elif kind == 1:
            data = b"\x00" + os.urandom(random.randrange(0, 60))
        elif kind == 2:
            data = b"\x01" + struct.pack(">II", i, 12304) + b"local/" + os.urandom(30)
        elif kind == 3:
            data = b"PX\x02" + bytes([random.randrange(0, 8)]) + os.urandom(random.randrange(0, 80))
        else:
            h = bytes(random.choice(nix32) for _ in range(32))
            good = b"PX\x02\x01" + os.urandom(12) + h
            data = good[: random.randrange(0, len(good))]
        s.sendto(data, (addr, port))
    print("sent %d datagrams" % count)


def drain(s):
    """Reads what a non-blocking socket holds; returns how many datagrams."""
    n = 0
    try:
        while True:
            s.recv(2048)
            n += 1
    except BlockingIOError:
        pass
    return n


def query_flood(addr, port, seconds):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.setblocking(False)
    nix32 = b"0123456789abcdfghijklmnpqrsvwxyz"
    node = os.urandom(8)
    sent = answers = 0
    end = time.time() + seconds
    while time.time() < end:
        h = bytes(random.choice(nix32) for _ in range(32))
        s.sendto(b"PX\x02\x01" + node + struct.pack(">I", sent) + h, (addr, port))
        sent += 1
        answers += drain(s)
        if sent % 100 == 0:
            time.sleep(0.001)
    time.sleep(0.5)
    answers += drain(s)
    print("sent %d answers %d" % (sent, answers))


def slowloris(addr, port, connections, seconds):
    socks = []
    for _ in range(connections):
        try:
            c = socket.create_connection((addr, port), timeout=2)
            c.setblocking(False)
            c.send(b"GET /peer/")
            socks.append(c)
        except OSError:
            pass
    opened = len(socks)
    closed = 0
    end = time.time() + seconds
    while time.time() < end and socks:
        alive = []
        for c in socks:
            try:
                c.send(b"a")
                try:
                    if c.recv(1024) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                alive.append(c)
            except OSError:
                closed += 1
                c.close()
        socks = alive
        time.sleep(0.5)
    for c in socks:
        c.close()
    print("opened %d closed-by-server %d" % (opened, closed))


def http_junk(addr, port):
    requests = [
        b"GET /" + b"a" * 100000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /peer/nix-cache-info HTTP/1.1\r\n" + b"X-Big: " + b"b" * 100000 + b"\r\n\r\n",
        b"GET /peer/nix-cache-info HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(5000)) + b"\r\n",
        b"\x00\x01\x02garbage\r\n\r\n",
        b"GET /peer/nix-cache-info HTTP/9.9\r\n\r\n",
        b"POST /peer/nix-cache-info HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /peer/../../etc/passwd HTTP/1.1\r\n\r\n",
        b"GET /nar/../../../etc/passwd HTTP/1.1\r\n\r\n",
    ]
    for r in requests:
        c = None
        try:
            c = socket.create_connection((addr, port), timeout=5)
            c.sendall(r)
            data = c.recv(200)
            print(data.split(b"\r\n")[0].decode("latin-1") or "(closed)")
        except OSError as e:
            print("(%s%s)" % (e.__class__.__name__, "" if c else " connecting"))
        finally:
            if c:
                c.close()


def pipeline(addr, port, connections, count, first, seconds):
    socks, sent = [], 0
    head = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % first).encode()
    more = b"GET /peer/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n" * count
    for _ in range(connections):
        try:
            c = socket.create_connection((addr, port), timeout=5)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.setblocking(False)
            data = head + more
            try:
                while data:
                    n = c.send(data)
                    data = data[n:]
            except BlockingIOError:
                pass
            sent += count + 1 if not data else (count + 1) * (1 - len(data) / len(head + more))
            socks.append(c)
        except OSError:
            pass
    print("opened %d sent %d" % (len(socks), int(sent)), flush=True)
    time.sleep(seconds)
    for c in socks:
        c.close()


def hold(addr, port, count, seconds, every=0.0, sources=""):
    sources = [a for a in sources.split(",") if a]
    socks = []
    for i in range(count):
        try:
            src = (sources[i % len(sources)], 0) if sources else None
            socks.append(socket.create_connection((addr, port), timeout=2, source_address=src))
        except OSError:
            pass
    print("opened %d" % len(socks), flush=True)
    head = b"GET /peer/nix-cache-info HTTP/1.1\r\nHost: x\r\n\r\n"
    closed = 0
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(min(every, end - time.time()) if every > 0 else max(0, end - time.time()))
        alive = []
        for c in socks:
            try:
                c.setblocking(False)
                try:
                    if c.recv(65536) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    pass
                if every > 0:
                    c.send(head)
                alive.append(c)
            except OSError:
                closed += 1
                c.close()
        socks = alive
    for c in socks:
        c.close()
    print("opened %d closed-by-server %d" % (closed + len(socks), closed), flush=True)


def slow_read(addr, port, connections, path, rate, seconds):
    socks = []
    request = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode()
    for _ in range(connections):
        try:
            c = socket.socket(family(addr), socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.settimeout(5)
            c.connect((addr, port))
            c.sendall(request)
            c.setblocking(False)
            socks.append([c, b""])
        except OSError:
            pass
    print("opened %d" % len(socks), flush=True)
    end = time.time() + seconds
    while time.time() < end:
        for entry in socks:
            try:
                data = entry[0].recv(rate)
                if len(entry[1]) < 16:
                    entry[1] += data
            except (BlockingIOError, OSError):
                pass
        time.sleep(1)
    heads = sum(1 for _, got in socks if got.startswith(b"HTTP/1.1 200"))
    for c, _ in socks:
        c.close()
    print("opened %d got-200 %d" % (len(socks), heads), flush=True)


def leave(addr, port, path, count):
    c = socket.socket(family(addr), socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.settimeout(10)
    c.connect((addr, port))
    c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
    got = 0
    while got < count:
        data = c.recv(min(65536, count - got))
        if not data:
            break
        got += len(data)
    c.close()
    print("read %d" % got, flush=True)


def body(addr, port, head):
    head = head.replace("\\r\\n", "\r\n").encode("latin-1")
    start = time.time()
    c = socket.create_connection((addr, port), timeout=3)
    c.sendall(head)
    data = b""
    state = "open"
    try:
        while True:
            got = c.recv(65536)
            if not got:
                state = "closed"
                break
            data += got
    except socket.timeout:
        pass
    except OSError as e:
        state = "reset (%s)" % e.__class__.__name__
    took = time.time() - start
    line = data.split(b"\r\n")[0].decode("latin-1") or "(nothing)"
    print("%s | %s | %.3f s" % (line, state, took))
    print(data.decode("latin-1"), file=sys.stderr)


def spoof(addr, port, count):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    nix32 = b"0123456789abcdfghijklmnpqrsvwxyz"
    for i in range(count):
        node = os.urandom(8)
        rid = struct.pack(">I", random.randrange(1 << 32))
        h = bytes(random.choice(nix32) for _ in range(32))
        kind = i % 3
        if kind == 0:
            data = b"PX\x02\x04" + node + b"\x00\x00\x00\x00" + b"\x01" + struct.pack(">H", 12304)
        elif kind == 1:
            data = b"PX\x02\x02" + node + rid + h + struct.pack(">H", 12304)
        else:
            data = b"PX\x02\x01" + node + rid + h
        try:
            s.sendto(data, (addr, port))
        except OSError:
            time.sleep(0.001)
        if i % 200 == 0:
            time.sleep(0.001)
    print("sent %d datagrams" % count)


def pull_flood(addr, port, count):
    nix32 = "0123456789abcdfghijklmnpqrsvwxyz"
    statuses = {}
    c = None
    for _ in range(count):
        h = "".join(random.choice(nix32) for _ in range(32))
        # 52 characters for 256 bits: the first holds the top bit alone.
        nar_hash = random.choice("01") + "".join(random.choice(nix32) for _ in range(51))
        request = ("GET /peer/pull/%s-%s.nar HTTP/1.1\r\nHost: x\r\n\r\n" % (nar_hash, h)).encode()
        status = "none"
        for _ in range(2):
            try:
                if c is None:
                    c = socket.create_connection((addr, port), timeout=10)
                    f = c.makefile("rb")
                c.sendall(request)
                line = f.readline().decode("latin-1")
                status = line.split(" ")[1] if line.startswith("HTTP/") else "closed"
                length = 0
                while True:
                    header = f.readline().decode("latin-1").strip()
                    if not header:
                        break
                    if header.lower().startswith("content-length:"):
                        length = int(header.split(":")[1])
                f.read(length)
                if status == "closed":
                    raise ConnectionResetError
                break
            except (OSError, ValueError, IndexError):
                if c:
                    c.close()
                c = None
        statuses[status] = statuses.get(status, 0) + 1
    print(" ".join("%s %d" % kv for kv in sorted(statuses.items())), flush=True)


def listen(port, path, seconds):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(16)
    s.settimeout(0.2)
    end = time.time() + seconds
    print("listening", flush=True)
    while time.time() < end:
        try:
            c, a = s.accept()
            with open(path, "a") as f:
                f.write("connection from %s\n" % (a,))
            c.close()
        except socket.timeout:
            pass


def peers(addr, port, entries):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    body = b""
    for entry in entries:
        host, p = entry.rsplit(":", 1)
        mapped = b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(host)
        body += os.urandom(8) + mapped + struct.pack(">HH", int(p), 0)
    data = b"PX\x02\x08" + os.urandom(8) + b"\x00" * 4 + b"\x00" + bytes([len(entries)]) + body
    for _ in range(2):
        s.sendto(data, (addr, port))
        time.sleep(0.1)
    print("sent a list of %d" % len(entries))


IP_PKTINFO = 8  # Linux; Python's socket module lacks it


def udp_listen(ports, path, seconds):
    socks = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.bind(("0.0.0.0", port))
        s.setblocking(False)
        socks.append((port, s))
    print("listening", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        for port, s in socks:
            try:
                data, ancillary, _, src = s.recvmsg(2048, 64)
            except BlockingIOError:
                continue
            dest = "?"
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    dest = socket.inet_ntoa(value[8:12])
            kind = str(data[3]) if data[:3] == b"PX\x02" and len(data) > 3 else "-"
            with open(path, "a") as f:
                f.write("%d %s %s %s\n" % (port, dest, src[0], kind))
        time.sleep(0.01)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "udp-garbage":
        udp_garbage(args[0], int(args[1]), int(args[2]))
    elif cmd == "query-flood":
        query_flood(args[0], int(args[1]), float(args[2]))
    elif cmd == "slowloris":
        slowloris(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "http-junk":
        http_junk(args[0], int(args[1]))
    elif cmd == "pipeline":
        pipeline(args[0], int(args[1]), int(args[2]), int(args[3]), args[4], float(args[5]))
    elif cmd == "hold":
        hold(args[0], int(args[1]), int(args[2]), float(args[3]),
             float(args[4]) if len(args) > 4 else 0.0, args[5] if len(args) > 5 else "")
    elif cmd == "slow-read":
        slow_read(args[0], int(args[1]), int(args[2]), args[3], int(args[4]), float(args[5]))
    elif cmd == "leave":
        leave(args[0], int(args[1]), args[2], int(args[3]))
    elif cmd == "body":
        body(args[0], int(args[1]), args[2])
    elif cmd == "spoof":
        spoof(args[0], int(args[1]), int(args[2]))
    elif cmd == "pull-flood":
        pull_flood(args[0], int(args[1]), int(args[2]))
    elif cmd == "listen":
        listen(int(args[0]), args[1], float(args[2]))
    elif cmd == "peers":
        peers(args[0], int(args[1]), args[2:])
    elif cmd == "udp-listen":
        udp_listen([int(p) for p in args[0].split(",")], args[1], float(args[2]))
    else:
        sys.exit(__doc__)
