"""HTTP/1.1 client for the chaos cases that records every response.

Raw sockets only (python3 stdlib), so that a malformed request goes out
byte for byte and every way a connection can end is seen and named.

Outcomes of one request, as recorded by `load`:
  ok           A complete response with a 2xx status.
  status       A complete response with any other status.
  refused      connect() failed, so the server never accepted the connection.
  unanswered   The request was written (or its write failed), then the
               connection was reset or closed before any response byte.
  truncated    Part of a response arrived, then the connection ended.
  timeout      No complete response came within the read timeout.
  malformed    The bytes that arrived are not an HTTP/1.1 response.

`refused` and `unanswered` mean "not accepted" when the Redis count shows
that no such request was counted; `truncated`, `timeout` and `malformed`
are failures in every case.

Command line (python3 chaos/client.py -h):
  load   keep-alive GET load on N connections, one CSV line per request
  hold   open idle, slow-header or requesting connections and watch them
  probe  send raw bytes and print the responses and how the connection ended
"""

import argparse
import json
import os
import re
import signal
import sys
import threading
import time

from hold import run_hold
from http1 import Reader, ResponseError, connect, parse_addr, probe
from records import read_records, summarize

INSTANCE_RE = re.compile(rb'"instance"\s*:\s*"([^"]*)"')


class LoadWorker(threading.Thread):
    """One keep-alive connection sending GET requests back to back."""

    def __init__(self, index, addr, target, args, stop, records):
        super().__init__(daemon=True)
        self.index = index
        self.addr = addr
        self.target = target
        self.args = args
        self.stop = stop
        self.records = records
        self.request = (
            f"{args.method} {args.path} HTTP/1.1\r\nHost: chaos\r\n\r\n".encode()
        )

    def run(self):
        sock = None
        reader = None
        reused = False
        while not self.stop.is_set():
            if sock is None:
                try:
                    sock = connect(self.addr, self.args.connect_timeout)
                except OSError as err:
                    self.record(time.monotonic(), "refused", 0, False, str(err))
                    self.stop.wait(self.args.backoff)
                    continue
                sock.settimeout(self.args.read_timeout)
                reader = Reader(sock)
                reused = False
            outcome, status, keep = self.exchange(sock, reader, reused)
            reused = True
            if not keep:
                sock.close()
                sock = None
                if outcome in ("unanswered", "truncated", "timeout"):
                    self.stop.wait(self.args.backoff)
        if sock is not None:
            sock.close()

    def exchange(self, sock, reader, reused):
        start = time.monotonic()
        try:
            sock.sendall(self.request)
        except OSError as err:
            self.record(start, "unanswered", 0, reused, "send: " + str(err))
            return "unanswered", 0, False
        try:
            response = reader.read_response(self.args.method == "HEAD")
        except ResponseError as err:
            outcome = self.classify(err)
            self.record(start, outcome, 0, reused, str(err))
            return outcome, 0, False
        outcome = "ok" if 200 <= response.status < 300 else "status"
        extra = ""
        if response.header("retry-after") is not None:
            extra = "retry-after"
        match = INSTANCE_RE.search(response.body)
        instance = match.group(1).decode() if match else ""
        self.record(start, outcome, response.status, reused, extra, instance)
        return outcome, response.status, not response.wants_close()

    @staticmethod
    def classify(err):
        if err.kind in ("eof", "reset"):
            return "unanswered" if err.received == 0 else "truncated"
        return err.kind

    def record(self, start, outcome, status, reused, note="", instance=""):
        end = time.monotonic()
        note = note.replace(",", ";")
        self.records.append(
            f"{start:.6f},{end:.6f},{self.target},{self.index},{outcome},"
            f"{status},{int(reused)},{instance},{note}\n"
        )


def run_load(args):
    targets = [parse_addr(t) for t in args.target]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    records = []
    workers = []
    for i in range(args.conns):
        target = i % len(targets)
        worker = LoadWorker(i, targets[target], target, args, stop, records)
        workers.append(worker)
        worker.start()
    deadline = time.monotonic() + args.duration
    while not stop.is_set() and time.monotonic() < deadline:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        stop.wait(0.05)
    stop.set()
    for worker in workers:
        worker.join(timeout=args.read_timeout + 1.0)
    with open(args.out, "w") as out:
        out.write("start,end,target,conn,outcome,status,reused,instance,note\n")
        out.writelines(records)
    print(json.dumps(summarize(read_records(args.out))))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    load = sub.add_parser("load", help="keep-alive load, one CSV line per request")
    load.add_argument("--target", action="append", required=True, help="host:port, repeatable")
    load.add_argument("--conns", type=int, default=64)
    load.add_argument("--duration", type=float, default=10.0, help="seconds")
    load.add_argument("--path", default="/")
    load.add_argument("--method", default="GET")
    load.add_argument("--out", required=True, help="CSV file of every request")
    load.add_argument("--stop-file", help="stop early once this file exists")
    load.add_argument("--read-timeout", type=float, default=10.0, help="seconds")
    load.add_argument("--connect-timeout", type=float, default=2.0, help="seconds")
    load.add_argument("--backoff", type=float, default=0.05, help="seconds after a failure")

    hold = sub.add_parser("hold", help="hold idle, slow or requesting connections")
    hold.add_argument("--target", required=True, help="host:port")
    hold.add_argument("--idle", type=int, default=0)
    hold.add_argument("--slow", type=int, default=0)
    hold.add_argument("--requesting", type=int, default=0)
    hold.add_argument("--path", default="/healthz")
    hold.add_argument("--slow-interval", type=float, default=1.0, help="seconds per byte")
    hold.add_argument("--duration", type=float, default=10.0, help="seconds")
    hold.add_argument("--batch", type=int, default=100, help="connections opened per burst")
    hold.add_argument("--ready-file", help="written once every connection is up")
    hold.add_argument("--release-file", help="once it exists, close answered connections")

    raw = sub.add_parser("probe", help="send raw bytes (a Python bytes literal)")
    raw.add_argument("--target", required=True, help="host:port")
    raw.add_argument("payload", help=r"e.g. 'GET / HTTP/1.1\r\n\r\n'")
    raw.add_argument("--read-timeout", type=float, default=3.0, help="seconds")

    args = parser.parse_args()
    if args.command == "load":
        run_load(args)
    elif args.command == "hold":
        run_hold(args)
    else:
        payload = args.payload.encode("latin-1").decode("unicode_escape").encode("latin-1")
        result = probe(parse_addr(args.target), payload, args.read_timeout)
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
