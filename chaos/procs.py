"""Start, watch and stop the processes of one chaos run.

Every process started here is recorded with its PID in `Registry` (and in a
PID file that scripts/chaos reads) and is stopped by PID only: never by
name. Each child runs in its own session, so a Ctrl-C at the terminal
reaches the orchestrator alone, which then stops its children.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time


class Registry:
    """PIDs of everything this run started, mirrored to a file."""

    def __init__(self, pid_file):
        self.pid_file = pid_file
        self.procs = []

    def add(self, proc, name):
        """Record `proc`; the file line is "PID NAME EXECUTABLE"."""
        self.procs.append((proc, name))
        program = proc.args[0] if isinstance(proc.args, list) else proc.args
        executable = os.path.realpath(shutil.which(program) or program)
        with open(self.pid_file, "a") as f:
            f.write(f"{proc.pid} {name} {executable}\n")
        return proc

    def stop_all(self):
        """Stop every child still running: SIGTERM, then SIGKILL after 3 s."""
        alive = [(p, n) for p, n in self.procs if p.poll() is None]
        for proc, _ in alive:
            signal_pid(proc, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for proc, _ in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_pid(proc, signal.SIGKILL)
                proc.wait()


def signal_pid(proc, sig):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def free_port():
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout, interval=0.01):
    """Poll `predicate` until it returns a true value; return it or None."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------- redis


def redis_command(port, *args, timeout=2.0):
    """Send one command in RESP and return the decoded reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        reply = sock.makefile("rb")
        return read_resp(reply)


def read_resp(stream):
    line = stream.readline()
    if not line:
        raise ConnectionError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:-2].decode()
    if kind == b"*":
        return [read_resp(stream) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


def redis_pings(port):
    try:
        return redis_command(port, "PING", timeout=0.5) == "PONG"
    except (OSError, RuntimeError, ConnectionError):
        return False


def redis_count(port, key):
    value = redis_command(port, "GET", key)
    return int(value) if value is not None else 0


def start_redis(registry, workdir, name, port=None, extra=()):
    """Start redis-server on loopback and wait until it replies to PING."""
    port = port or free_port()
    data_dir = os.path.join(workdir, name)
    os.makedirs(data_dir, exist_ok=True)
    argv = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", data_dir,
        "--logfile", os.path.join(data_dir, "redis.log"),
        *extra,
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    registry.add(proc, f"redis-server:{name}")
    if not wait_for(lambda: redis_pings(port), 5.0):
        raise RuntimeError(f"redis-server on port {port} did not reply to PING within 5 s")
    return proc, port


# ---------------------------------------------------------------- tally


class Tally:
    """A running tally process with its log file and address."""

    def __init__(self, proc, name, log_path, stderr_path, port):
        self.proc = proc
        self.name = name
        self.log_path = log_path
        self.stderr_path = stderr_path
        self.port = port

    @property
    def addr(self):
        return ("127.0.0.1", self.port)

    @property
    def addr_text(self):
        return f"127.0.0.1:{self.port}"

    def log_lines(self):
        """Return the JSON log lines written so far (others are skipped)."""
        if not self.log_path or not os.path.exists(self.log_path):
            return []
        lines = []
        with open(self.log_path, errors="replace") as f:
            for line in f:
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines


def tally_env(redis_port, name, overrides):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "INSTANCE_NAME": name,
        "KEY_PREFIX": "tally:",
    }
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def start_tally(registry, binary, workdir, name, redis_port, env=None,
                stdout="file", nofile=None, wait_ready=True):
    """Start tally with `env` on top of loopback defaults.

    stdout is "file" (the log file), "closed" (fd 1 closed before exec) or
    an open file descriptor (e.g. the write end of a pipe). With a file the
    port comes from the "listening" log line, otherwise PORT must be set.
    nofile sets RLIMIT_NOFILE (soft and hard) in the child.
    """
    env = tally_env(redis_port, name, env or {})
    cwd = os.path.join(workdir, name)
    os.makedirs(cwd, exist_ok=True)
    log_path = os.path.join(cwd, "stdout.log") if stdout == "file" else None
    stderr_path = os.path.join(cwd, "stderr.log")
    stderr = open(stderr_path, "ab")
    out = open(log_path, "ab") if log_path else None

    def before_exec():
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if stdout == "closed":
            os.close(1)

    if stdout == "file":
        child_stdout = out
    elif stdout == "closed":
        child_stdout = None
    else:
        child_stdout = stdout
    proc = subprocess.Popen(
        [binary], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=child_stdout, stderr=stderr, preexec_fn=before_exec,
        start_new_session=True,
    )
    registry.add(proc, f"tally:{name}")
    stderr.close()
    if out:
        out.close()
    port = int(env["PORT"])
    tally = Tally(proc, name, log_path, stderr_path, port)
    if port == 0:
        tally.port = wait_listening_port(tally)
    if wait_ready and not wait_healthy(tally, 10.0):
        raise RuntimeError(f"tally {name} did not return 200 on /readyz within 10 s")
    return tally


def exit_error(tally):
    """Return an error naming the exit status and the last stderr line."""
    last = ""
    if os.path.exists(tally.stderr_path):
        with open(tally.stderr_path, errors="replace") as f:
            lines = f.read().strip().splitlines()
        last = lines[-1] if lines else ""
    return RuntimeError(f"tally {tally.name} exited with {tally.proc.returncode}: {last}")


def wait_listening_port(tally):
    def find():
        if tally.proc.poll() is not None:
            raise exit_error(tally)
        for line in tally.log_lines():
            if line.get("message") == "listening":
                return int(str(line.get("addr", "")).rpartition(":")[2])
        return None

    port = wait_for(find, 10.0)
    if not port:
        raise RuntimeError(f"tally {tally.name} wrote no 'listening' line within 10 s")
    return port


def wait_healthy(tally, timeout, path="/readyz"):
    from http1 import get

    def ready():
        if tally.proc.poll() is not None:
            raise exit_error(tally)
        try:
            response, _ = get(tally.addr, path, timeout=1.0)
            return response.status == 200
        except OSError:
            return False
        except Exception:
            return False

    return wait_for(ready, timeout, 0.02)


# ---------------------------------------------------------------- /proc


def proc_status(pid):
    """Return VmRSS and VmHWM in KiB and Threads of `pid`, or {}."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    fields[key] = int(value.split()[0])
    except OSError:
        return {}
    return fields


def cpu_seconds(pid):
    """Return user + system CPU seconds used by `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(parts[11]) + int(parts[12])) / ticks


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler(threading.Thread):
    """Samples RSS and thread count of some PIDs every `interval` seconds."""

    def __init__(self, pids, interval=0.05):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.interval = interval
        self.stop_event = threading.Event()
        self.max_threads = {pid: 0 for pid in self.pids}
        self.max_rss_kib = {pid: 0 for pid in self.pids}
        self.hwm_kib = {pid: 0 for pid in self.pids}

    def run(self):
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def sample(self):
        for pid in self.pids:
            status = proc_status(pid)
            if not status:
                continue
            self.max_threads[pid] = max(self.max_threads[pid], status.get("Threads", 0))
            self.max_rss_kib[pid] = max(self.max_rss_kib[pid], status.get("VmRSS", 0))
            self.hwm_kib[pid] = max(self.hwm_kib[pid], status.get("VmHWM", 0))

    def add(self, pid):
        self.max_threads.setdefault(pid, 0)
        self.max_rss_kib.setdefault(pid, 0)
        self.hwm_kib.setdefault(pid, 0)
        self.pids.append(pid)

    def finish(self):
        self.sample()
        self.stop_event.set()
        self.join(timeout=1.0)

    def peak(self):
        """Return (max threads, peak RSS in MiB) over every sampled PID."""
        threads = max(self.max_threads.values(), default=0)
        rss = max(list(self.hwm_kib.values()) + list(self.max_rss_kib.values()), default=0)
        return threads, round(rss / 1024, 1)
