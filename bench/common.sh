# Shared helpers for scripts/bench-startup and scripts/bench-load: tool
# checks, the machine header, building the C probe, a private redis-server
# and statistics. Source it; it defines functions and starts nothing.

# Prints a message on stderr and exits 1.
die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Exits with an install hint unless the command TOOL exists.
require_tool() {
    local tool=$1 hint=$2
    command -v "$tool" >/dev/null 2>&1 ||
        die "missing tool '$tool': install it with: $hint"
}

# Prints the first line of a command's version output, or "not installed".
tool_version() {
    command -v "$1" >/dev/null 2>&1 || { echo "not installed"; return; }
    timeout 5 "$@" 2>&1 | head -n 1
}

# Prints the machine, load and source revision a result belongs to.
print_machine() {
    local commit dirty
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo "none (no commit)")
    dirty=$(git status --porcelain 2>/dev/null | wc -l)
    echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host:     $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p')," \
        "$(free -m | awk '/^Mem:/ { print $2 }') MiB RAM"
    echo "kernel:   $(uname -sr)"
    echo "load:     $(cut -d ' ' -f 1-3 /proc/loadavg) (1, 5, 15 min)"
    echo "commit:   $commit, $dirty changed or untracked files"
}

# Compiles bench/startup-probe.c into DIR and sets PROBE to its path.
build_probe() {
    local dir=$1 source
    source="$(dirname "${BASH_SOURCE[0]}")/startup-probe.c"
    gcc -O2 -Wall -o "$dir/startup-probe" "$source" ||
        die "failed to compile $source"
    PROBE="$dir/startup-probe"
}

# Prints a loopback port that was free a moment ago.
free_port() {
    "$PROBE" --free-port
}

# Starts a throw-away redis-server on a free port of 127.0.0.1 and of any
# extra ADDRESS given, and sets REDIS_PORT and REDIS_PID. Persistence is off.
# Protected mode is off with extra addresses, so that containers on a
# private network can reach it without a password.
start_redis() {
    local log=$1 protected=yes attempt
    shift
    (($# > 0)) && protected=no
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 "$@" \
        --protected-mode "$protected" --save '' --appendonly no \
        --daemonize no >>"$log" 2>&1 &
    REDIS_PID=$!
    for attempt in $(seq 100); do
        if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    die "redis-server on port $REDIS_PORT did not reply to PING within 5 s" \
        "(log: $log)"
}

# Sends SIGTERM to PID, waits up to 5 s, then sends SIGKILL.
stop_pid() {
    local pid=$1 attempt
    kill -TERM "$pid" 2>/dev/null || return 0
    for attempt in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Reads numbers, one a line, and prints "min median p95 max" scaled by
# DIVISOR with DECIMALS decimals; p95 is the nearest rank. Prints "- - - -"
# for no input.
summarize() {
    local divisor=${1:-1} decimals=${2:-2}
    sort -g | awk -v d="$divisor" -v p="$decimals" '
        { v[NR] = $1 / d }
        END {
            if (NR == 0) { print "- - - -"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            r = int(0.95 * NR); if (r < 0.95 * NR) r++
            f = "%." p "f"
            printf f " " f " " f " " f "\n", v[1], m, v[r], v[NR]
        }'
}
