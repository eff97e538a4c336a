"""Cases 5 and 9: idle and slow connections, and the open-file limit."""

import json
import os
import time

import procs
from common import Result, check_still_serves, load_latency, normal_request

IDLE = 1000
SLOW = 1000
HEADER_TIMEOUT_MS = 10000
# Room for the 2 000 held connections plus the normal client; the default
# of 1 024 would shed the normal client with 503 instead.
MAX_CONNECTIONS = 4096
# Allowed memory growth while the connections are held: 64 KiB each.
RSS_PER_CONNECTION_KIB = 64
LATENCY_FACTOR = 3
LATENCY_SLACK_MS = 25
LOW_NOFILE = 64
HELD_OVER_LIMIT = 100
# Mean CPU use above this while over the limit means a busy loop.
MAX_CPU_FRACTION = 0.5


def wait_file(path, timeout):
    return procs.wait_for(lambda: os.path.exists(path), timeout, 0.05)


def hold_summary(proc, timeout):
    stdout, _ = proc.communicate(timeout=timeout)
    return json.loads(stdout.decode() or "{}")


def slow_clients(ctx):
    """Case 5: 1 000 silent and 1 000 one-byte-a-second connections."""
    result = Result(5, "idle-and-slow-connections")
    case_dir = ctx.case_dir(5)
    _, redis_port = ctx.redis(case_dir)
    env = {"MAX_CONNECTIONS": MAX_CONNECTIONS, "HEADER_TIMEOUT_MS": HEADER_TIMEOUT_MS}
    tally = ctx.tally(case_dir, "tally", redis_port, env)
    baseline = load_latency(tally.addr, 200)
    before = procs.proc_status(tally.proc.pid)
    sampler = procs.Sampler([tally.proc.pid], interval=0.1)
    sampler.start()

    hold_s = HEADER_TIMEOUT_MS / 1000 + 5
    hold, ready, _ = ctx.start_hold(
        case_dir, "hold", tally.addr_text, hold_s, idle=IDLE, slow=SLOW,
    )
    opened_at = time.monotonic()
    if not wait_file(ready, 10.0):
        result.error = "the held connections were not all up within 10 s"
        return result
    ready_s = time.monotonic() - opened_at
    time.sleep(1.0)
    during = load_latency(tally.addr, 200)
    mid = procs.proc_status(tally.proc.pid)
    mid_fds = procs.open_fds(tally.proc.pid)
    hold_report = hold_summary(hold, hold_s + 10)
    sampler.finish()

    threads, _ = sampler.peak()
    rss_before = before.get("VmRSS", 0)
    rss_peak = sampler.max_rss_kib[tally.proc.pid]
    growth_mib = round((rss_peak - rss_before) / 1024, 1)
    limit_mib = round((IDLE + SLOW) * RSS_PER_CONNECTION_KIB / 1024, 1)
    latency_limit = LATENCY_FACTOR * (baseline["p99_ms"] or 0) + LATENCY_SLACK_MS
    result.figure(
        "MAX_CONNECTIONS / HEADER_TIMEOUT_MS",
        f"{MAX_CONNECTIONS} / {HEADER_TIMEOUT_MS}",
    )
    result.figure("seconds to open the 2 000 connections", round(ready_s, 2))
    result.figure("baseline GET / on new connections", baseline)
    result.figure("GET / while held", during)
    result.figure(
        "threads before / while held / peak",
        f"{before.get('Threads')} / {mid.get('Threads')} / {threads}",
    )
    result.figure(
        "RSS MiB before / peak",
        f"{round(rss_before / 1024, 1)} / {round(rss_peak / 1024, 1)}",
    )
    result.figure("open fds while held", mid_fds)
    result.figure("held connections", hold_report)
    result.check(
        during["errors"] == 0,
        f"{during['errors']} of 200 normal requests failed while held",
    )
    result.check(
        (during["p99_ms"] or 1e9) <= latency_limit,
        f"p99 while held {during['p99_ms']} ms <= {LATENCY_FACTOR} x baseline p99 "
        f"{baseline['p99_ms']} ms + {LATENCY_SLACK_MS} ms",
    )
    result.check(
        growth_mib <= limit_mib,
        f"RSS growth {growth_mib} MiB <= {limit_mib} MiB "
        f"({RSS_PER_CONNECTION_KIB} KiB a connection)",
    )
    for kind in ("idle", "slow"):
        group = hold_report.get(kind, {})
        connected = group.get("connected", 0)
        closed = sum(v for k, v in group.get("ends", {}).items() if k != "open")
        latest = (group.get("closed_by_server_after_s") or {}).get("max")
        result.check(
            connected == group.get("opened"),
            f"{kind}: {connected} of {group.get('opened')} connected",
        )
        result.check(
            closed == connected,
            f"{kind}: {closed} of {connected} closed by tally (header timeout)",
        )
        result.check(
            latest is not None and latest <= HEADER_TIMEOUT_MS / 1000 + 3,
            f"{kind}: last one closed {latest} s after connecting (HEADER_TIMEOUT_MS + 3 s)",
        )
    check_still_serves(result, tally)
    return result


def fd_limit(ctx):
    """Case 9: tally under RLIMIT_NOFILE 64 with 100 connections held."""
    result = Result(9, "open-file-limit")
    case_dir = ctx.case_dir(9)
    _, redis_port = ctx.redis(case_dir)
    tally = ctx.tally(case_dir, "tally", redis_port, nofile=LOW_NOFILE)
    fds_idle = procs.open_fds(tally.proc.pid)
    sampler = procs.Sampler([tally.proc.pid], interval=0.1)
    sampler.start()

    hold, ready, release = ctx.start_hold(
        case_dir, "hold", tally.addr_text, 14.0, requesting=HELD_OVER_LIMIT,
    )
    if not wait_file(ready, 10.0):
        result.error = "the held connections were not all up within 10 s"
        return result
    time.sleep(1.0)
    fds_held = procs.open_fds(tally.proc.pid)
    cpu_start = procs.cpu_seconds(tally.proc.pid)
    time.sleep(3.0)
    cpu_fraction = (procs.cpu_seconds(tally.proc.pid) - cpu_start) / 3.0
    over_status, over_ms, over_error = normal_request(tally, "/healthz", timeout=2.0)

    with open(release, "w"):
        pass
    released_at = time.monotonic()
    served = procs.wait_for(lambda: normal_request(tally, "/", timeout=1.0)[0] == 200, 5.0, 0.05)
    served_s = round(time.monotonic() - released_at, 3)
    time.sleep(0.5)
    hold.terminate()
    hold_report = hold_summary(hold, 30)
    sampler.finish()

    warnings = [
        line for line in tally.log_lines()
        if line.get("level") in ("warn", "error")
    ]
    threads, rss = sampler.peak()
    group = hold_report.get("requesting", {})
    result.figure("RLIMIT_NOFILE", LOW_NOFILE)
    result.figure("open fds idle / while held", f"{fds_idle} / {fds_held}")
    result.figure("held connections (GET /healthz each)", group)
    result.figure("CPU while over the limit (cores)", round(cpu_fraction, 3))
    result.figure("extra request while over the limit", over_status or over_error)
    result.figure("seconds from release to a served GET /", served_s if served else None)
    result.figure("warn/error log lines", len(warnings))
    result.figure("first warn/error lines", [compact(w) for w in warnings[:3]])
    result.figure("peak threads", threads)
    result.figure("peak RSS MiB", rss)
    statuses = group.get("statuses", {})
    result.check(statuses.get("200", 0) > 0, f"{statuses.get('200', 0)} held connections got 200")
    result.check(
        group.get("connected", 0) > statuses.get("200", 0) or statuses.get("503", 0) > 0,
        f"{HELD_OVER_LIMIT} connections exceed what RLIMIT_NOFILE {LOW_NOFILE} allows",
    )
    result.check(
        cpu_fraction <= MAX_CPU_FRACTION,
        f"CPU {cpu_fraction:.2f} cores <= {MAX_CPU_FRACTION} while over the limit",
    )
    result.check(
        bool(served),
        f"normal GET / served {served_s} s after the held connections closed",
    )
    result.check(
        any(mentions_limit(w) for w in warnings),
        "a warn line about the accept error or the connection limit",
    )
    check_still_serves(result, tally)
    return result


def mentions_limit(line):
    text = json.dumps(line).lower()
    return any(word in text for word in ("accept", "limit", "too many", "file", "connections"))


def compact(line):
    keep = {k: v for k, v in line.items() if k != "time"}
    return json.dumps(keep)[:200]
