# Shared helpers for the project's shell scripts. Source it; do not run it.
# shellcheck shell=bash disable=SC2034
LEAPIO_CACHE=${LEAPIO_CACHE:-/var/cache/leapio}
log() { printf '[leapio] %s\n' "$*" >&2; }
die() { printf '[leapio] error: %s\n' "$*" >&2; exit 1; }
need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and uses chroot)"; }

# The Debian trixie root (QEMU >= 10.1, guest kernel and tools) built by
# setup-host.sh. QEMU runs chrooted into it, so every file QEMU opens lives
# under it; LEAPIO_GUEST_DIR is the project's directory as QEMU sees it.
LEAPIO_ROOT=${LEAPIO_ROOT:-$LEAPIO_CACHE/trixie}
LEAPIO_GUEST_DIR=/var/lib/leapio
LEAPIO_DATA=$LEAPIO_ROOT$LEAPIO_GUEST_DIR
# where socp puts its vfio-user sockets: /run/leapio inside the root
LEAPIO_RUN=$LEAPIO_ROOT/run/leapio
LEAPIO_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 not found${2:+: $2}"; }

# now: wall clock in seconds with milliseconds
now() { date +%s.%3N; }
# elapsed START: seconds since START (from now), one decimal
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for_socket PATH SECONDS [PID]: until PATH is a socket; fails early if
# PID (the server) exits.
wait_for_socket() {
    local path=$1 secs=$2 pid=${3:-} i=0
    while ((i < secs * 10)); do
        [[ -S $path ]] && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 2
        fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# ---- socp (the runtime under test) ----
SOCP_BIN=${SOCP_BIN:-$LEAPIO_REPO/target/release/socp}
SOCP_PID=''
SOCP_LOG=''

# start_socp LOG ARGS...: start socp in the background (stderr to LOG) and
# wait for the socket of every --ctrl sock=PATH to appear (30 s).
start_socp() {
    SOCP_LOG=$1
    shift
    [[ -x $SOCP_BIN ]] || die "socp binary not found at $SOCP_BIN (cargo build --release -p socp)"
    local a socks=() s
    for a in "$@"; do
        if [[ $a == sock=* ]]; then
            s=${a#sock=}
            socks+=("${s%%,*}")
        fi
    done
    mkdir -p "$LEAPIO_RUN"
    for s in "${socks[@]}"; do rm -f "$s"; done
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$SOCP_BIN" "$@" 2> "$SOCP_LOG" &
    SOCP_PID=$!
    for s in "${socks[@]}"; do
        if ! wait_for_socket "$s" 30 "$SOCP_PID"; then
            local why="did not create $s within 30 s"
            kill -0 "$SOCP_PID" 2>/dev/null || why="exited before creating $s"
            log "socp $why; its stderr ($SOCP_LOG):"
            tail -n 20 "$SOCP_LOG" | sed 's/^/    socp| /' >&2
            stop_socp >/dev/null 2>&1 || true
            return 1
        fi
    done
}

# stop_socp: SIGTERM, wait up to 15 s, then SIGKILL. Returns 0 when socp was
# still running and exited with status 0 by itself; otherwise prints why.
stop_socp() {
    [[ -n $SOCP_PID ]] || return 0
    local pid=$SOCP_PID rc=0 i=0
    SOCP_PID=''
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || rc=$?
        log "socp had already exited (status $rc) before it was stopped; see $SOCP_LOG"
        return 1
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((i < 150)); do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        log "socp did not exit within 15 s of SIGTERM (killed); see $SOCP_LOG"
        return 1
    fi
    wait "$pid" 2>/dev/null || rc=$?
    if ((rc != 0)); then
        log "socp exited with status $rc after SIGTERM; see $SOCP_LOG"
        return 1
    fi
}

# socp_tail N: last lines of socp's stderr, indented, on stderr
socp_tail() {
    [[ -n $SOCP_LOG && -f $SOCP_LOG ]] || return 0
    log "last lines of socp's stderr ($SOCP_LOG):"
    tail -n "${1:-20}" "$SOCP_LOG" | sed 's/^/    socp| /' >&2
}

# guest_tail LOG N: last console lines of a guest, indented, on stderr
guest_tail() {
    [[ -f $1 ]] || return 0
    log "last lines of the guest console ($1):"
    tr -d '\r' < "$1" | tail -n "${2:-20}" | sed 's/^/    guest| /' >&2
}

# python3 for parsing guest output (installed by setup-host.sh)
PY=${PY:-/usr/bin/python3}
guestlog() { "$PY" "$LEAPIO_REPO/scripts/guestlog.py" "$@"; }

# cargo installed by rustup lives in ~/.cargo/bin, often not in root's PATH
# under CI or sudo: use it when it is there.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    export PATH
fi

# run_guest ARGS...: scripts/run-guest.sh in the background, waited for, so
# that a signal to the caller can stop it (stop_guest in the caller's trap)
# instead of leaving QEMU running until its timeout.
GUEST_PID=''
run_guest() {
    local rc=0
    bash "$LEAPIO_REPO/scripts/run-guest.sh" "$@" &
    GUEST_PID=$!
    wait "$GUEST_PID" || rc=$?
    GUEST_PID=''
    return "$rc"
}
stop_guest() {
    [[ -n $GUEST_PID ]] || return 0
    kill -TERM "$GUEST_PID" 2>/dev/null || true
    wait "$GUEST_PID" 2>/dev/null || true
    GUEST_PID=''
}
