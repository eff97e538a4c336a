"""Raw-socket HTTP/1.1 pieces shared by the chaos client and cases.

Requests go out byte for byte, so a malformed one is sent as written, and
every way a response can end (complete, reset, closed, timed out) is
reported as such.
"""

import errno
import re
import socket
import threading
import time

READ_CHUNK = 65536


class ResponseError(Exception):
    """A response could not be read completely; `kind` is the outcome."""

    def __init__(self, kind, received, detail=""):
        super().__init__(f"{kind} after {received} bytes: {detail}")
        self.kind = kind
        self.received = received


class Response:
    """One parsed HTTP/1.1 response."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name):
        """Return the first value of header `name`, or None."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def wants_close(self):
        value = (self.header("connection") or "").lower()
        return "close" in value

    def summary(self):
        return {
            "status": self.status,
            "headers": {k.lower(): v for k, v in self.headers},
            "body": self.body[:300].decode("utf-8", "replace"),
        }


def parse_addr(text):
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


class Reader:
    """Buffered response reader over a connected socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.total = 0
        # Bytes received before the response being read now began.
        self.base = 0

    def _fill(self):
        received = self.total - self.base
        try:
            data = self.sock.recv(READ_CHUNK)
        except socket.timeout:
            raise ResponseError("timeout", received) from None
        except ConnectionResetError:
            raise ResponseError("reset", received) from None
        except OSError as err:
            raise ResponseError("reset", received, str(err)) from None
        if not data:
            raise ResponseError("eof", received)
        self.total += len(data)
        self.buf += data

    def read_until(self, marker, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise ResponseError("malformed", self.total - self.base, "head too long")
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def read_exact(self, size):
        while len(self.buf) < size:
            self._fill()
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_to_eof(self):
        try:
            while True:
                self._fill()
        except ResponseError as err:
            if err.kind != "eof":
                raise
        data, self.buf = self.buf, b""
        return data

    def read_response(self, head_request=False):
        self.base = self.total - len(self.buf)
        head = self.read_until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        match = re.match(rb"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
        if not match:
            raise ResponseError("malformed", self.total - self.base, repr(lines[0][:80]))
        status = int(match.group(1))
        reason = (match.group(2) or b"").decode("latin-1")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ResponseError("malformed", self.total - self.base, repr(line[:80]))
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        response = Response(status, reason, headers, b"")
        response.body = self._read_body(response, head_request)
        return response

    def _read_body(self, response, head_request):
        if head_request or response.status in (204, 304) or response.status < 200:
            return b""
        if "chunked" in (response.header("transfer-encoding") or "").lower():
            return self._read_chunked()
        length = response.header("content-length")
        if length is not None:
            return self.read_exact(int(length))
        return self.read_to_eof()

    def _read_chunked(self):
        body = b""
        while True:
            size = int(self.read_until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self.read_until(b"\r\n")
                return body
            body += self.read_exact(size)
            self.read_exact(2)


def connect(addr, timeout):
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def get(addr, path="/", timeout=5.0):
    """Send one GET on a new connection; return (Response, seconds)."""
    start = time.monotonic()
    sock = connect(addr, timeout)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        response = Reader(sock).read_response()
    finally:
        sock.close()
    return response, time.monotonic() - start


def probe(addr, payload, read_timeout=3.0, send_timeout=10.0):
    """Send raw `payload` on a new connection and read until it ends.

    The payload is written from a second thread while this one reads, so a
    response sent before the server stops reading is still seen. Returns a
    dict: responses (parsed, in order), end (eof, reset, timeout or
    malformed), send_error, seconds to the first response and in total.
    """
    start = time.monotonic()
    sock = connect(addr, send_timeout)
    sock.settimeout(read_timeout)
    send_result = {}

    def send():
        try:
            sock.sendall(payload)
        except OSError as err:
            send_result["error"] = errno.errorcode.get(err.errno, str(err))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    reader = Reader(sock)
    responses = []
    first = None
    end = "eof"
    try:
        while True:
            responses.append(reader.read_response())
            if first is None:
                first = time.monotonic() - start
    except ResponseError as err:
        end = err.kind
        if err.kind == "eof" and reader.buf:
            end = "truncated"
    sender.join(timeout=1.0)
    sock.close()
    return {
        "responses": [r.summary() for r in responses],
        "statuses": [r.status for r in responses],
        "end": end,
        "send_error": send_result.get("error"),
        "first_response_s": first,
        "total_s": time.monotonic() - start,
    }
