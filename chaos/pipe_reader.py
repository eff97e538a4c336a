"""Read a pipe into a file, stopping while a pause file exists.

Stands in for a log collector that stalls: while --pause-file exists the
pipe is not read, so the writer's pipe buffer (64 KiB on Linux) fills up.
--ack-file is written each time reading stops, so the caller knows when
the stall has begun.
"""

import argparse
import os
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="file that receives what is read")
    parser.add_argument("--pause-file", required=True)
    parser.add_argument("--ack-file", required=True)
    args = parser.parse_args()
    paused = False
    with open(args.out, "ab") as out:
        while True:
            if os.path.exists(args.pause_file):
                if not paused:
                    with open(args.ack_file, "w"):
                        pass
                    paused = True
                time.sleep(0.02)
                continue
            paused = False
            data = os.read(0, 65536)
            if not data:
                return
            out.write(data)
            out.flush()


if __name__ == "__main__":
    main()
