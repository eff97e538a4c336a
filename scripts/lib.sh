# shellcheck shell=bash
# Shared helpers for tally's scripts: source this file, do not run it.
# Each helper installs what is missing on a Debian machine when it runs as
# root, and otherwise prints which package to install.

log() {
    echo "$(basename "$0"): $*" >&2
}

die() {
    log "$*"
    exit 1
}

# ensure_commands CMD:PACKAGE ... installs the Debian package of every
# command that is missing.
ensure_commands() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing commands; install the Debian packages: ${missing[*]}"
    fi
    log "installing ${missing[*]}"
    if [ -z "${TALLY_APT_UPDATED:-}" ]; then
        apt-get update -qq >&2
        export TALLY_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

ensure_cargo() {
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found; install Rust with rustup (https://rustup.rs)"
}

ensure_musl_target() {
    ensure_cargo
    if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
        log "adding the Rust target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl >&2
    fi
    ensure_commands musl-gcc:musl-tools
}

# docker_engine_up succeeds when a Docker engine responds.
docker_engine_up() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# ensure_docker_engine installs docker.io and starts dockerd when no engine
# responds. dockerd keeps running after the script ends.
ensure_docker_engine() {
    docker_engine_up && return 0
    ensure_commands dockerd:docker.io docker:docker.io
    if ! docker_engine_up; then
        [ "$(id -u)" -eq 0 ] || die "no Docker engine responds; start dockerd as root"
        log "starting dockerd (its log: /tmp/tally-dockerd.log)"
        nohup dockerd >/tmp/tally-dockerd.log 2>&1 &
        local waited=0
        until docker_engine_up; do
            waited=$((waited + 1))
            [ "$waited" -le 60 ] || die "dockerd did not respond within 60 s; see /tmp/tally-dockerd.log"
            sleep 1
        done
    fi
}
