# Shared helpers for the project's shell scripts. Source it; do not run it.
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
