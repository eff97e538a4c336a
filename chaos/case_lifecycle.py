"""Cases 1 and 2: SIGTERM under load, and a rolling restart behind haproxy."""

import csv
import io
import os
import re
import signal
import socket
import subprocess
import time

import procs
from common import HERE, Result, in_flight

KEY = "tally:visits"
FAILURES = ("truncated", "timeout", "malformed")


def sigterm_under_load(ctx):
    """Case 1: check that every request tally accepted before SIGTERM gets a complete response."""
    result = Result(1, "sigterm-under-load")
    case_dir = ctx.case_dir(1)
    shutdown_timeout = 8
    _, redis_port = ctx.redis(case_dir)
    tally = ctx.tally(
        case_dir, "tally", redis_port,
        {"SHUTDOWN_TIMEOUT_SECS": shutdown_timeout, "SHUTDOWN_DELAY_SECS": 0},
    )
    sampler = procs.Sampler([tally.proc.pid])
    sampler.start()
    load = ctx.start_load(case_dir, "load", [tally.addr_text], 64, 30)
    time.sleep(2.0)

    term_at = time.monotonic()
    tally.proc.send_signal(signal.SIGTERM)
    try:
        code = tally.proc.wait(timeout=shutdown_timeout + 5)
    except subprocess.TimeoutExpired:
        code = None
    exit_s = time.monotonic() - term_at
    time.sleep(0.5)
    sampler.finish()
    summary, rows = load.finish()

    outcomes = summary.get("outcomes", {})
    ok = outcomes.get("ok", 0)
    counted = procs.redis_count(redis_port, KEY)
    failed = sum(outcomes.get(kind, 0) for kind in FAILURES)
    unanswered = [r for r in rows if r["outcome"] == "unanswered"]
    threads, rss = sampler.peak()
    result.figure("requests sent", summary.get("requests"))
    result.figure("outcomes", outcomes)
    result.figure("statuses", summary.get("statuses"))
    flying = in_flight(rows, term_at)
    flying_outcomes = {}
    for row in flying:
        flying_outcomes[row["outcome"]] = flying_outcomes.get(row["outcome"], 0) + 1
    reused = sum(1 for r in unanswered if r["reused"])
    result.figure("in flight at SIGTERM, by outcome", flying_outcomes)
    result.figure(
        "not accepted: refused / closed with no response byte (on a reused keep-alive connection)",
        f"{outcomes.get('refused', 0)} / {len(unanswered)} ({reused})",
    )
    result.figure("redis count", counted)
    result.figure("exit status", code)
    result.figure("exit after SIGTERM (s)", round(exit_s, 3))
    result.figure("peak threads", threads)
    result.figure("peak RSS MiB", rss)
    result.check(ok > 0, f"{ok} requests got a 2xx response before SIGTERM")
    result.check(failed == 0, f"{failed} truncated, timed-out or malformed responses")
    result.check(counted == ok, f"redis count {counted} == 2xx responses {ok}")
    result.check(code == 0, f"exit status {code} == 0")
    result.check(
        exit_s <= shutdown_timeout,
        f"exited {exit_s:.2f} s after SIGTERM, within SHUTDOWN_TIMEOUT_SECS={shutdown_timeout}",
    )
    result.check(not port_open(tally.port), "listening port closed after exit")
    return result


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- case 2


def haproxy_config(template, front_port, tally_ports, socket_path):
    """Return the example config with this run's ports and socket path."""
    with open(template) as f:
        text = f.read()
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{front_port}")
    for i, port in enumerate(tally_ports, start=1):
        text = text.replace(f"127.0.0.1:808{i}", f"127.0.0.1:{port}")
    return text.replace("/tmp/tally-haproxy.sock", socket_path)


def haproxy_states(socket_path):
    """Return {server name: status} from the haproxy stats socket."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1.0)
            sock.connect(socket_path)
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return {}
    text = data.decode().lstrip("# ")
    return {
        row["svname"]: row["status"]
        for row in csv.DictReader(io.StringIO(text))
        if row.get("pxname") == "tally_back" and row["svname"] not in ("BACKEND",)
    }


def wait_state(socket_path, server, state, timeout):
    return procs.wait_for(
        lambda: haproxy_states(socket_path).get(server, "").startswith(state),
        timeout, 0.02,
    )


def rolling_restart(ctx):
    """Case 2: restart three tally processes in turn behind haproxy."""
    result = Result(2, "rolling-restart-behind-haproxy")
    case_dir = ctx.case_dir(2)
    # CHAOS_ROLLING_DELAY=0 shows what the delay prevents.
    delay = int(os.environ.get("CHAOS_ROLLING_DELAY", "1"))
    _, redis_port = ctx.redis(case_dir)
    ports = [procs.free_port() for _ in range(3)]
    env = {"SHUTDOWN_DELAY_SECS": delay, "SHUTDOWN_TIMEOUT_SECS": 8}
    tallies = [
        ctx.tally(case_dir, f"tally{i}-gen1", redis_port, dict(env, PORT=port))
        for i, port in enumerate(ports, start=1)
    ]
    front = procs.free_port()
    socket_path = os.path.join(case_dir, "haproxy.sock")
    config = os.path.join(case_dir, "haproxy.cfg")
    with open(config, "w") as f:
        template = os.path.join(HERE, "haproxy-rolling.cfg")
        f.write(haproxy_config(template, front, ports, socket_path))
    haproxy_log = open(os.path.join(case_dir, "haproxy.log"), "ab")
    haproxy = subprocess.Popen(
        ["haproxy", "-f", config, "-db"], stdin=subprocess.DEVNULL,
        stdout=haproxy_log, stderr=haproxy_log, start_new_session=True,
    )
    ctx.registry.add(haproxy, "haproxy")
    haproxy_log.close()
    for i in range(1, 4):
        if not wait_state(socket_path, f"tally{i}", "UP", 5.0):
            result.error = f"haproxy did not report tally{i} UP within 5 s"
            return result

    sampler = procs.Sampler([t.proc.pid for t in tallies])
    sampler.start()
    load = ctx.start_load(case_dir, "load", [f"127.0.0.1:{front}"], 32, 60)
    time.sleep(1.5)
    restarts = []
    for i in range(3):
        entry = restart_one(ctx, case_dir, tallies, i, redis_port, env, socket_path, sampler)
        restarts.append(entry)
        time.sleep(1.0)
    time.sleep(1.0)
    summary, rows = load.finish()
    sampler.finish()

    outcomes = summary.get("outcomes", {})
    ok = outcomes.get("ok", 0)
    failed = summary.get("requests", 0) + outcomes.get("refused", 0) - ok
    counted = procs.redis_count(redis_port, KEY)
    instances = {}
    for row in rows:
        if row["instance"]:
            instances[row["instance"]] = instances.get(row["instance"], 0) + 1
    threads, rss = sampler.peak()
    result.figure("SHUTDOWN_DELAY_SECS", delay)
    result.figure("requests sent", summary.get("requests"))
    result.figure("outcomes", outcomes)
    result.figure("statuses", summary.get("statuses"))
    result.figure("2xx per process", dict(sorted(instances.items())))
    result.figure("redis count", counted)
    result.figure("restarts", restarts)
    result.figure("client latency", {k: summary.get(k) for k in ("p50_ms", "p99_ms", "max_ms")})
    result.figure("peak threads (any process)", threads)
    result.figure("peak RSS MiB (any process)", rss)
    result.check(ok > 0, f"{ok} requests got a 2xx response")
    result.check(failed == 0, f"{failed} requests without a 2xx response")
    result.check(counted == ok, f"redis count {counted} == 2xx responses {ok}")
    for entry in restarts:
        name = entry["server"]
        result.check(entry["exit_status"] == 0, f"{name}: exit status {entry['exit_status']} == 0")
        result.check(entry["down_s"] is not None, f"{name}: haproxy saw it DOWN after SIGTERM")
        result.check(entry["up_s"] is not None, f"{name}: new process UP in haproxy")
        result.check(
            instances.get(entry["new_instance"], 0) > 0,
            f"{name}: new process served {instances.get(entry['new_instance'], 0)} requests",
        )
    return result


def restart_one(ctx, case_dir, tallies, index, redis_port, env, socket_path, sampler):
    """SIGTERM tally `index`, wait for its exit, start its successor."""
    old = tallies[index]
    server = f"tally{index + 1}"
    term_at = time.monotonic()
    old.proc.send_signal(signal.SIGTERM)
    down = wait_state(socket_path, server, "DOWN", 5.0)
    down_s = round(time.monotonic() - term_at, 3) if down else None
    try:
        code = old.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        code = None
    exit_s = round(time.monotonic() - term_at, 3)
    name = re.sub(r"gen\d+$", "gen2", old.name)
    started = time.monotonic()
    new = ctx.tally(case_dir, name, redis_port, dict(env, PORT=old.port))
    sampler.add(new.proc.pid)
    tallies[index] = new
    up = wait_state(socket_path, server, "UP", 5.0)
    up_s = round(time.monotonic() - started, 3) if up else None
    return {
        "server": server,
        "new_instance": name,
        "exit_status": code,
        "down_s": down_s,
        "exit_s": exit_s,
        "up_s": up_s,
    }
