"""Shared pieces of the chaos cases: the run context and case results."""

import json
import os
import shutil
import subprocess
import sys
import time

import http1
import procs
import records

HERE = os.path.dirname(os.path.abspath(__file__))


class Result:
    """Checks and figures of one case; it passes when every check holds."""

    def __init__(self, number, name):
        self.number = number
        self.name = name
        self.checks = []
        self.figures = {}
        self.error = None

    def check(self, ok, text):
        self.checks.append((bool(ok), text))
        return bool(ok)

    def figure(self, key, value):
        self.figures[key] = value

    @property
    def passed(self):
        return self.error is None and bool(self.checks) and all(ok for ok, _ in self.checks)

    def print(self, out=sys.stdout):
        verdict = "PASS" if self.passed else "FAIL"
        print(f"case {self.number} {self.name}: {verdict}", file=out)
        for key, value in self.figures.items():
            print(f"    {key}: {format_value(value)}", file=out)
        for ok, text in self.checks:
            print(f"    [{'ok' if ok else 'FAILED'}] {text}", file=out)
        if self.error:
            print(f"    [FAILED] error: {self.error}", file=out)
        out.flush()

    def as_dict(self):
        return {
            "case": self.number,
            "name": self.name,
            "passed": self.passed,
            "figures": self.figures,
            "checks": [{"ok": ok, "text": text} for ok, text in self.checks],
            "error": self.error,
        }


def format_value(value):
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


class Context:
    """Run-wide state shared by the cases: the binary, a work folder and the registry."""

    def __init__(self, binary, workdir, registry):
        self.binary = binary
        self.workdir = workdir
        self.registry = registry

    def case_dir(self, number):
        """Return a new, empty folder for case `number` (once per case)."""
        path = os.path.join(self.workdir, f"case{number}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path

    def redis(self, case_dir, name="redis", port=None, extra=()):
        return procs.start_redis(self.registry, case_dir, name, port, extra)

    def tally(self, case_dir, name, redis_port, env=None, **kwargs):
        return procs.start_tally(
            self.registry, self.binary, case_dir, name, redis_port, env, **kwargs
        )

    def start_load(self, case_dir, name, targets, conns, duration, extra=()):
        """Start client.py load in the background; see LoadRun."""
        out = os.path.join(case_dir, f"{name}.csv")
        stop_file = os.path.join(case_dir, f"{name}.stop")
        argv = [sys.executable, os.path.join(HERE, "client.py"), "load"]
        for target in targets:
            argv += ["--target", target]
        argv += [
            "--conns", str(conns), "--duration", str(duration),
            "--out", out, "--stop-file", stop_file, *extra,
        ]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.registry.add(proc, f"client-load:{name}")
        return LoadRun(proc, out, stop_file)

    def start_hold(self, case_dir, name, target, duration, **counts):
        """Start client.py hold in the background; return (proc, ready, release)."""
        ready = os.path.join(case_dir, f"{name}.ready")
        release = os.path.join(case_dir, f"{name}.release")
        argv = [
            sys.executable, os.path.join(HERE, "client.py"), "hold",
            "--target", target, "--duration", str(duration),
            "--ready-file", ready, "--release-file", release,
        ]
        for key, value in counts.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.registry.add(proc, f"client-hold:{name}")
        return proc, ready, release


class LoadRun:
    """A background load client; `finish` stops it and returns its records."""

    def __init__(self, proc, out, stop_file):
        self.proc = proc
        self.out = out
        self.stop_file = stop_file

    def finish(self, timeout=30.0, stop=True):
        """Stop the client now (or, with stop=False, let its duration run out)."""
        if stop:
            with open(self.stop_file, "w"):
                pass
        stdout, _ = self.proc.communicate(timeout=timeout)
        rows = records.read_records(self.out)
        return json.loads(stdout.decode() or "{}"), rows


def normal_request(tally, path="/", timeout=2.0):
    """Send one normal GET; return (status or None, milliseconds, error text)."""
    try:
        response, seconds = http1.get(tally.addr, path, timeout=timeout)
        return response.status, round(seconds * 1000, 2), ""
    except (OSError, http1.ResponseError) as err:
        return None, None, str(err)


def check_still_serves(result, tally, path="/"):
    """Add the 'still serves a normal request' check and the resource figures."""
    status, ms, error = normal_request(tally, path)
    code = tally.proc.poll()
    name = tally.name
    result.check(
        code is None,
        f"{name} alive" if code is None else f"{name} exited with status {code}",
    )
    result.check(
        status == 200, f"{name}: normal GET {path} after the case: {status or error} in {ms} ms"
    )
    stats = procs.proc_status(tally.proc.pid)
    if stats:
        result.figure("rss_peak_mib (VmHWM)", round(stats.get("VmHWM", 0) / 1024, 1))
        result.figure("threads_now", stats.get("Threads"))


def load_latency(addr, count, path="/", pause=0.0):
    """Send `count` sequential GETs on new connections; return ms figures."""
    samples = []
    errors = 0
    for _ in range(count):
        try:
            response, seconds = http1.get(addr, path, timeout=5.0)
            if response.status == 200:
                samples.append(seconds * 1000)
            else:
                errors += 1
        except (OSError, http1.ResponseError):
            errors += 1
        if pause:
            time.sleep(pause)
    return {
        "count": count,
        "errors": errors,
        "p50_ms": records.rounded(records.percentile(samples, 0.5)),
        "p99_ms": records.rounded(records.percentile(samples, 0.99)),
        "max_ms": records.rounded(max(samples) if samples else None),
    }


def in_flight(rows, moment):
    """Return the requests sent before `moment` whose outcome came after it."""
    return [r for r in rows if r["start"] <= moment <= r["end"]]


def log_messages(tally, level=None):
    return [
        line for line in tally.log_lines()
        if level is None or line.get("level") == level
    ]
