"""Case 10: stdout closed, stdout a broken pipe, stdout a stalled pipe."""

import json
import os
import subprocess
import sys
import time

import procs
from common import HERE, Result, check_still_serves, load_latency

LATENCY_FACTOR = 3
LATENCY_SLACK_MS = 25
REPORT_WORDS = ("dropped", "lost", "discarded", "skipped")


def stdout_closed(ctx, result, case_dir, redis_port):
    env = {"PORT": procs.free_port()}
    tally = ctx.tally(case_dir, "closed", redis_port, env, stdout="closed")
    figures = load_latency(tally.addr, 200)
    try:
        target = os.readlink(f"/proc/{tally.proc.pid}/fd/1")
    except OSError:
        target = "(fd 1 not open)"
    result.figure("started with >&-: GET / x200", figures)
    result.figure("started with >&-: fd 1 of tally", target)
    result.check(
        figures["errors"] == 0,
        f"stdout closed: {figures['errors']} of 200 requests failed",
    )
    check_still_serves(result, tally)


def stdout_broken_pipe(ctx, result, case_dir, redis_port):
    read_end, write_end = os.pipe()
    env = {"PORT": procs.free_port()}
    os.close(read_end)
    tally = ctx.tally(case_dir, "broken-pipe", redis_port, env, stdout=write_end)
    os.close(write_end)
    figures = load_latency(tally.addr, 200)
    result.figure("reader gone (EPIPE): GET / x200", figures)
    result.check(
        figures["errors"] == 0,
        f"stdout EPIPE: {figures['errors']} of 200 requests failed",
    )
    check_still_serves(result, tally)


def stdout_stalled(ctx, result, case_dir, redis_port):
    out = os.path.join(case_dir, "collected.log")
    pause = os.path.join(case_dir, "reader.pause")
    ack = os.path.join(case_dir, "reader.ack")
    read_end, write_end = os.pipe()
    reader = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "pipe_reader.py"),
         "--out", out, "--pause-file", pause, "--ack-file", ack],
        stdin=read_end, start_new_session=True,
    )
    ctx.registry.add(reader, "pipe-reader")
    os.close(read_end)
    env = {"PORT": procs.free_port()}
    tally = ctx.tally(case_dir, "stalled", redis_port, env, stdout=write_end)
    os.close(write_end)

    baseline_load = ctx.start_load(case_dir, "baseline", [tally.addr_text], 16, 2.0)
    baseline, _ = baseline_load.finish(stop=False)
    with open(pause, "w"):
        pass
    load_latency(tally.addr, 5)
    if not procs.wait_for(lambda: os.path.exists(ack), 5.0):
        result.error = "the pipe reader did not pause"
        return
    lines_at_pause = count_lines(out)
    stalled_load = ctx.start_load(case_dir, "stalled", [tally.addr_text], 16, 4.0)
    stalled, _ = stalled_load.finish(stop=False)
    os.remove(pause)
    resumed_at = time.monotonic()
    probes = []
    report = procs.wait_for(lambda: find_report(out, lines_at_pause, tally, probes), 5.0, 0.1)
    report_s = round(time.monotonic() - resumed_at, 2) if report else None
    time.sleep(0.2)
    # Each request writes one access line: compare them with what arrived.
    requests_after_pause = 5 + stalled.get("requests", 0) + 2 * len(probes)
    arrived = count_lines(out) - lines_at_pause
    lost = report.get("lost") if isinstance(report, dict) else None

    ok = stalled.get("outcomes", {}).get("ok", 0)
    failed = stalled.get("requests", 0) - ok
    limit = LATENCY_FACTOR * (baseline.get("p99_ms") or 0) + LATENCY_SLACK_MS
    result.figure("stalled reader: baseline load (16 conns, 2 s)", brief(baseline))
    result.figure("stalled reader: load while not read (16 conns, 4 s)", brief(stalled))
    result.figure(
        "stalled reader: lines collected before / after",
        f"{lines_at_pause} / {count_lines(out)}",
    )
    result.figure("stalled reader: report line", report)
    result.figure("stalled reader: report seen after resume (s)", report_s)
    result.figure(
        "stalled reader: requests after the pause / lines arrived + reported lost",
        f"{requests_after_pause} / {arrived} + {lost}",
    )
    result.check(
        failed == 0,
        f"stdout stalled: {failed} of {stalled.get('requests')} requests without a 2xx response",
    )
    result.check(
        (stalled.get("p99_ms") or 1e9) <= limit,
        f"stdout stalled: p99 {stalled.get('p99_ms')} ms <= {LATENCY_FACTOR} x baseline "
        f"{baseline.get('p99_ms')} ms + {LATENCY_SLACK_MS} ms",
    )
    result.check(
        report is not None,
        "stdout stalled: a log line reports the dropped lines after resume",
    )
    check_still_serves(result, tally)


def brief(summary):
    keys = ("requests", "outcomes", "p50_ms", "p99_ms", "max_ms")
    return {k: summary.get(k) for k in keys}


def count_lines(path):
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def find_report(path, skip, tally, probes):
    """Return the first log line after line `skip` that reports lost lines.

    Sends two requests first, so that tally has lines to write; `probes`
    gets one entry per call.
    """
    probes.append(load_latency(tally.addr, 2))
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
            if number < skip:
                continue
            text = raw.decode("utf-8", "replace")
            if any(word in text.lower() for word in REPORT_WORDS):
                try:
                    line = json.loads(text)
                except ValueError:
                    return text.strip()[:300]
                line.pop("time", None)
                return line
    return None


def log_output(ctx):
    """Case 10: check that tally keeps serving with stdout closed, broken or stalled."""
    result = Result(10, "stdout-closed-and-stalled")
    case_dir = ctx.case_dir(10)
    _, redis_port = ctx.redis(case_dir)
    stdout_closed(ctx, result, case_dir, redis_port)
    stdout_broken_pipe(ctx, result, case_dir, redis_port)
    stdout_stalled(ctx, result, case_dir, redis_port)
    return result
