"""Cases 6, 7 and 8: oversized heads, body framing attacks, malformed bytes.

Each probe is raw bytes on a new connection. A probe passes when tally
either responds with one of the expected error statuses and then closes the
connection, or (where `accepted` allows it) reads the body correctly and
treats the following pipelined request as the next request. A request
hidden in a body (POST /counters/smuggled) must never get a response or be
counted, because that would be a desync.
"""

import random

import procs
from http1 import probe
from common import Result, check_still_serves, normal_request

HOST = b"Host: chaos\r\n"
SMUGGLED = b"POST /counters/smuggled HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n"
FOLLOWUP = b"GET /counters/followup HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n"
SMUGGLED_KEY = "tally:smuggled"
# Every 4xx status, and 501 for an unknown transfer coding.
CLIENT_ERRORS = set(range(400, 500)) | {501}


class Probe:
    """Bytes to send and the responses that pass."""

    def __init__(self, label, payload, errors, close_ok=True, accepted=0, key=None,
                 keepalive_ok=False):
        self.label = label
        self.payload = payload
        self.errors = set(errors)
        self.close_ok = close_ok
        # Number of 2xx responses expected when tally may serve the request.
        self.accepted = accepted
        # A Redis key that must not exist afterwards.
        self.key = key
        # The request is well framed, so after the error tally may keep the
        # connection and serve FOLLOWUP, which the payload then ends with.
        self.keepalive_ok = keepalive_ok


def chunked(data):
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


def get_with(headers, body=b"", path=b"/counters/followup"):
    return b"GET " + path + b" HTTP/1.1\r\n" + HOST + headers + b"\r\n" + body


def head_probes():
    big = b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: "
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(10000))
    return [
        Probe("64 KiB header value", big + b"a" * 65536 + b"\r\n\r\n", {431}),
        Probe("16 MiB header value", big + b"a" * (16 << 20) + b"\r\n\r\n", {431}),
        Probe("10 000 headers", b"GET /healthz HTTP/1.1\r\n" + HOST + many + b"\r\n", {431}),
        Probe(
            "1 MiB request line",
            b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\n" + HOST + b"\r\n",
            {414, 431},
        ),
    ]


def body_probes():
    size = b"%d" % len(SMUGGLED)
    return [
        Probe(
            "POST with Content-Length 99999999999 and no body",
            b"POST /counters/huge HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999\r\n\r\n",
            {413}, close_ok=False, key="tally:huge",
        ),
        Probe(
            "GET / with Content-Length 99999999999 and no body",
            b"GET / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999\r\n\r\n",
            {413}, close_ok=False,
        ),
        Probe(
            "GET with a chunked body holding a request",
            get_with(b"Transfer-Encoding: chunked\r\n", chunked(SMUGGLED)) + FOLLOWUP,
            CLIENT_ERRORS, accepted=2,
        ),
        Probe(
            "two different Content-Length headers",
            get_with(b"Content-Length: 0\r\nContent-Length: " + size + b"\r\n", SMUGGLED)
            + FOLLOWUP,
            CLIENT_ERRORS,
        ),
        Probe(
            "Content-Length list with different values",
            get_with(b"Content-Length: 0, " + size + b"\r\n", SMUGGLED) + FOLLOWUP,
            CLIENT_ERRORS,
        ),
        Probe(
            "the same Content-Length twice",
            get_with(
                b"Content-Length: " + size + b"\r\nContent-Length: " + size + b"\r\n",
                SMUGGLED,
            )
            + FOLLOWUP,
            CLIENT_ERRORS, accepted=2,
        ),
        Probe(
            "Content-Length and Transfer-Encoding: chunked",
            get_with(b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", chunked(SMUGGLED))
            + FOLLOWUP,
            CLIENT_ERRORS,
        ),
        Probe(
            "Transfer-Encoding: gzip",
            get_with(b"Transfer-Encoding: gzip\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "Transfer-Encoding: chunked, gzip",
            get_with(b"Transfer-Encoding: chunked, gzip\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "Transfer-Encoding: identity",
            get_with(b"Transfer-Encoding: identity\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "Transfer-Encoding: xchunked",
            get_with(b"Transfer-Encoding: xchunked\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "Transfer-Encoding: chunked twice",
            get_with(
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                chunked(SMUGGLED),
            )
            + FOLLOWUP,
            CLIENT_ERRORS,
        ),
        Probe(
            "Content-Length: -1",
            get_with(b"Content-Length: -1\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "Content-Length: +72",
            get_with(b"Content-Length: +" + size + b"\r\n", SMUGGLED) + FOLLOWUP, CLIENT_ERRORS,
        ),
        Probe(
            "chunk size that is not hex",
            get_with(b"Transfer-Encoding: chunked\r\n", b"zz\r\n" + SMUGGLED) + FOLLOWUP,
            CLIENT_ERRORS,
        ),
        Probe(
            "POST /counters/bodytest with a body holding a request",
            b"POST /counters/bodytest HTTP/1.1\r\n" + HOST
            + b"Content-Length: " + size + b"\r\n\r\n" + SMUGGLED + FOLLOWUP,
            CLIENT_ERRORS, accepted=2,
        ),
    ]


def garbage(size):
    generator = random.Random(20261204)
    return bytes(generator.randrange(256) for _ in range(size))


def byte_probes():
    plain = b"GET /healthz HTTP/1.1\r\n" + HOST
    return [
        Probe(
            "HTTP/2 connection preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {505}, close_ok=False,
        ),
        Probe("512 bytes of binary garbage", garbage(512), {400}, close_ok=False),
        Probe(
            "TLS ClientHello start",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + garbage(64) + b"\r\n\r\n",
            {400},
        ),
        Probe(
            "UTF-8 bytes in the path",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n" + HOST + b"\r\n" + FOLLOWUP, {400}, keepalive_ok=True,
        ),
        Probe(
            "byte 0xFF in the path",
            b"GET /\xff HTTP/1.1\r\n" + HOST + b"\r\n", {400}, close_ok=False,
        ),
        Probe(
            "UTF-8 bytes in a header value (RFC 9110 obs-text)",
            plain + b"X-Name: caf\xc3\xa9\r\nConnection: close\r\n\r\n", {400}, accepted=1,
        ),
        Probe("CR inside a header value", plain + b"X-A: a\rb\r\n\r\n", {400}, close_ok=False),
        Probe("LF inside a header value", plain + b"X-A: a\nb\r\n\r\n", {400}, close_ok=False),
        Probe("NUL inside a header value", plain + b"X-A: a\x00b\r\n\r\n", {400}, close_ok=False),
        Probe("space inside a header name", plain + b"X A: b\r\n\r\n", {400}, close_ok=False),
        Probe(
            "obs-fold continuation line",
            plain + b"X-A: a\r\n b\r\nConnection: close\r\n\r\n", {400}, accepted=1,
        ),
        Probe(
            "%C3%28 (invalid UTF-8) in a counter name",
            b"GET /counters/%C3%28 HTTP/1.1\r\n" + HOST + b"\r\n" + FOLLOWUP,
            {400}, keepalive_ok=True,
        ),
        Probe(
            "%FF%FE as the whole path",
            b"GET /%FF%FE HTTP/1.1\r\n" + HOST + b"\r\n" + FOLLOWUP, {400}, keepalive_ok=True,
        ),
        Probe(
            "%00 in a counter name",
            b"GET /counters/a%00b HTTP/1.1\r\n" + HOST + b"\r\n" + FOLLOWUP,
            {400}, keepalive_ok=True,
        ),
    ]


def judge(outcome, spec):
    """Return (passed, text) for one probe outcome."""
    statuses = outcome["statuses"]
    end = outcome["end"]
    closed = end in ("eof", "reset")
    bodies = " ".join(r["body"] for r in outcome["responses"])
    if "smuggled" in bodies:
        return False, f"DESYNC: the request inside the body got a response ({statuses})"
    if not statuses:
        return spec.close_ok and closed, f"no response, connection {end}"
    first = statuses[0]
    followup = '"counter":"followup"' in (outcome["responses"][-1]["body"] if statuses else "")
    if first in spec.errors and spec.keepalive_ok and statuses[1:] == [200] and followup:
        return closed, f"{first}, connection kept, next request got 200, then {end}"
    if first in spec.errors:
        if len(statuses) > 1:
            return False, f"{first}, then {statuses[1:]} on the same connection (desync)"
        return closed, f"{first}, then connection {end}" + ("" if closed else " (expected close)")
    if spec.accepted and len(statuses) == spec.accepted and all(200 <= s < 300 for s in statuses):
        return True, f"accepted: {statuses}, body read correctly, then connection {end}"
    expected = sorted(spec.errors)
    return False, f"unexpected {statuses}, connection {end} (expected {expected} and close)"


def run_probes(result, tally, redis_port, probes, read_timeout=3.0):
    for spec in probes:
        rss_before = procs.proc_status(tally.proc.pid).get("VmHWM", 0)
        try:
            outcome = probe(tally.addr, spec.payload, read_timeout=read_timeout)
        except OSError as err:
            result.check(False, f"{spec.label}: connect failed: {err}")
            continue
        passed, text = judge(outcome, spec)
        ms = outcome["first_response_s"]
        timing = "" if ms is None else f" in {1000 * ms:.1f} ms"
        result.check(passed, f"{spec.label}: {text}{timing}")
        if spec.key:
            counted = procs.redis_count(redis_port, spec.key)
            result.check(counted == 0, f"{spec.label}: {spec.key} counted {counted} times")
        status, _, error = normal_request(tally, "/healthz")
        result.check(
            status == 200,
            f"{spec.label}: served /healthz afterwards ({status or error})",
        )
        growth = procs.proc_status(tally.proc.pid).get("VmHWM", 0) - rss_before
        if growth > 1024:
            result.figure(f"{spec.label}: peak RSS growth MiB", round(growth / 1024, 1))
    smuggled = procs.redis_count(redis_port, SMUGGLED_KEY)
    result.check(
        smuggled == 0,
        f"{SMUGGLED_KEY} counted {smuggled} times (request hidden in a body)",
    )


def input_case(ctx, number, name, probes):
    result = Result(number, name)
    case_dir = ctx.case_dir(number)
    _, redis_port = ctx.redis(case_dir)
    tally = ctx.tally(case_dir, "tally", redis_port)
    run_probes(result, tally, redis_port, probes)
    check_still_serves(result, tally)
    return result


def oversized_heads(ctx):
    """Case 6: request heads of 64 KiB and 16 MiB, 10 000 headers, 1 MiB line."""
    return input_case(ctx, 6, "oversized-request-heads", head_probes())


def body_framing(ctx):
    """Case 7: body framing that could desync a keep-alive connection."""
    return input_case(ctx, 7, "body-framing", body_probes())


def malformed_bytes(ctx):
    """Case 8: HTTP/2 preface, garbage, non-ASCII and control bytes."""
    return input_case(ctx, 8, "malformed-bytes", byte_probes())
