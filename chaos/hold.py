"""The `hold` mode of chaos/client.py: connections that are opened and watched.

One thread drives every connection through `selectors`, so thousands can be
held at once. The summary is one JSON line on stdout.
"""

import errno
import json
import os
import re
import selectors
import signal
import socket
import threading
import time

from http1 import READ_CHUNK, parse_addr
from records import rounded



class HeldConnection:
    """State of one connection opened by `hold`."""

    def __init__(self, kind, sock, payload):
        self.kind = kind
        self.sock = sock
        self.payload = payload
        self.sent = 0
        self.opened = time.monotonic()
        self.connected = None
        self.closed = None
        self.end = None
        self.received = b""
        self.answered = None
        self.released = False

    def status(self):
        match = re.match(rb"HTTP/1\.[01] (\d{3})", self.received)
        return int(match.group(1)) if match else None


def run_hold(args):
    """Open connections of three kinds and watch how each one ends.

    idle: connects and sends nothing. slow: sends a request head one byte
    per --slow-interval seconds, never finishing it. requesting: sends one
    whole request and keeps the connection open after the response.
    Ends after --duration seconds or on SIGTERM, then prints a summary.
    """
    addr = parse_addr(args.target)
    sel = selectors.DefaultSelector()
    connections = []
    kinds = [("idle", args.idle), ("slow", args.slow), ("requesting", args.requesting)]
    slow_head = b"GET / HTTP/1.1\r\nHost: chaos\r\nX-Slow: " + b"a" * 4096
    full = f"GET {args.path} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode()
    for kind, count in kinds:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(addr)
            payload = {"idle": b"", "slow": slow_head, "requesting": full}[kind]
            conn = HeldConnection(kind, sock, payload)
            connections.append(conn)
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            if len(connections) % args.batch == 0:
                pump(sel, 0.02)
    ready_written = False
    start = time.monotonic()
    next_tick = start
    release_at = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while time.monotonic() - start < args.duration and not stop.is_set():
        now = time.monotonic()
        if now >= next_tick:
            next_tick = now + args.slow_interval
            for conn in connections:
                if conn.kind == "slow" and conn.connected and conn.closed is None:
                    send_byte(conn)
        pump(sel, 0.05)
        if not ready_written and all(c.connected or c.closed for c in connections):
            write_marker(args.ready_file, len(connections))
            ready_written = True
        if release_at is None and args.release_file and os.path.exists(args.release_file):
            release_at = time.monotonic()
            release_answered(sel, connections)
    finish(connections, start, release_at, args)


def pump(sel, timeout):
    for key, events in sel.select(timeout):
        conn = key.data
        if conn.connected is None and events & selectors.EVENT_WRITE:
            error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                mark_closed(sel, conn, "connect-" + errno.errorcode.get(error, str(error)))
                continue
            conn.connected = time.monotonic()
            sel.modify(conn.sock, selectors.EVENT_READ, conn)
            if conn.kind == "requesting":
                try:
                    conn.sock.send(conn.payload)
                except OSError as err:
                    mark_closed(sel, conn, "send-" + errno.errorcode.get(err.errno, "?"))
            continue
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(READ_CHUNK)
            except OSError as err:
                mark_closed(sel, conn, errno.errorcode.get(err.errno, "error").lower())
                continue
            if not data:
                mark_closed(sel, conn, "eof")
            else:
                conn.received += data
                conn.answered = conn.answered or time.monotonic()


def send_byte(conn):
    if conn.sent >= len(conn.payload):
        return
    try:
        conn.sock.send(conn.payload[conn.sent : conn.sent + 1])
        conn.sent += 1
    except BlockingIOError:
        pass
    except OSError:
        pass


def mark_closed(sel, conn, end):
    conn.closed = time.monotonic()
    conn.end = end
    try:
        sel.unregister(conn.sock)
    except (KeyError, ValueError):
        pass
    conn.sock.close()


def release_answered(sel, connections):
    """Close every connection that already has a response."""
    for conn in connections:
        if conn.closed is None and conn.received:
            conn.released = True
            mark_closed(sel, conn, "released")


def write_marker(path, count):
    if path:
        with open(path + ".tmp", "w") as f:
            f.write(str(count))
        os.replace(path + ".tmp", path)


def finish(connections, start, release_at, args):
    """Print one JSON line with a summary for each kind of connection."""
    report = {"release_s": None if release_at is None else round(release_at - start, 3)}
    for kind in ("idle", "slow", "requesting"):
        group = [c for c in connections if c.kind == kind]
        if not group:
            continue
        statuses = {}
        ends = {}
        close_after = []
        after_release = 0
        for conn in group:
            status = conn.status()
            key = str(status) if status else "none"
            statuses[key] = statuses.get(key, 0) + 1
            end = conn.end or "open"
            ends[end] = ends.get(end, 0) + 1
            if conn.closed and conn.connected and end != "released":
                close_after.append(conn.closed - conn.connected)
            if conn.answered and release_at and conn.answered > release_at:
                after_release += 1
        report[kind] = {
            "opened": len(group),
            "connected": sum(1 for c in group if c.connected),
            "statuses": statuses,
            "ends": ends,
            "closed_by_server_after_s": {
                "min": rounded(min(close_after)) if close_after else None,
                "max": rounded(max(close_after)) if close_after else None,
            },
            "answered_after_release": after_release,
        }
    for conn in connections:
        if conn.closed is None:
            conn.sock.close()
    print(json.dumps(report))
