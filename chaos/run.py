"""Run the chaos cases against a tally binary; called by scripts/chaos.

Prints PASS or FAIL with figures for each case, writes every figure to
results.json in the work folder and ends with `chaos: N passed, M failed`.
Exit status 1 when any case failed.
"""

import argparse
import json
import os
import signal
import sys
import time
import traceback

import case_connections
import case_input
import case_lifecycle
import case_logging
import case_redis
import procs
from common import Context, Result

CASES = {
    1: case_lifecycle.sigterm_under_load,
    2: case_lifecycle.rolling_restart,
    3: case_redis.redis_restart,
    4: case_redis.redis_stall,
    5: case_connections.slow_clients,
    6: case_input.oversized_heads,
    7: case_input.body_framing,
    8: case_input.malformed_bytes,
    9: case_connections.fd_limit,
    10: case_logging.log_output,
}


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def run_case(number, ctx):
    func = CASES[number]
    started = time.monotonic()
    try:
        result = func(ctx)
    except Interrupted:
        raise
    except Exception as err:  # a broken case must not stop the others
        result = Result(number, func.__name__.replace("_", "-"))
        result.error = f"{type(err).__name__}: {err}"
        traceback.print_exc(file=sys.stderr)
    finally:
        ctx.registry.stop_all()
    result.figure("case duration (s)", round(time.monotonic() - started, 1))
    result.print()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", required=True, help="tally executable")
    parser.add_argument("--workdir", required=True, help="folder for logs and data")
    parser.add_argument("cases", nargs="*", type=int, help="case numbers (default: all)")
    args = parser.parse_args()
    numbers = args.cases or sorted(CASES)
    unknown = [n for n in numbers if n not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]}: expected 1 to {len(CASES)}")

    registry = procs.Registry(os.path.join(args.workdir, "pids"))
    ctx = Context(os.path.abspath(args.binary), args.workdir, registry)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    results = []
    try:
        for number in numbers:
            results.append(run_case(number, ctx))
    except Interrupted as err:
        print(f"chaos: interrupted by {err}, stopping what was started", file=sys.stderr)
        registry.stop_all()
        return 130
    finally:
        registry.stop_all()
        with open(os.path.join(args.workdir, "results.json"), "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=2)

    passed = sum(1 for r in results if r.passed)
    failed = len(results) - passed
    print(f"chaos: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
