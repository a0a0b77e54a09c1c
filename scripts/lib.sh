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

# wait_until SECS PID CMD...: until CMD succeeds (tried every 0.1 s); 1 after
# SECS, 2 as soon as PID (when given) has exited.
wait_until() {
    local secs=$1 pid=$2 i=0
    shift 2
    while ((i < secs * 10)); do
        "$@" && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 2
        fi
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# wait_for_socket PATH SECONDS [PID]: until PATH is a socket; fails early if
# PID (the server) exits.
wait_for_socket() { wait_until "$2" "${3:-}" test -S "$1"; }

# ---- the data plane under test: socp (the runtime), or leapio (the
# all-in-one: the host-driver and the runtime in one process) ----
SOCP_BIN=${SOCP_BIN:-$LEAPIO_REPO/target/release/socp}
LEAPIO_BIN=${LEAPIO_BIN:-$LEAPIO_REPO/target/release/leapio}
LEAPIOCTL_BIN=${LEAPIOCTL_BIN:-$LEAPIO_REPO/target/release/leapioctl}
SOCP_PID=''
SOCP_LOG=''

# start_socp LOG ARGS...: start socp in the background (stderr to LOG).
start_socp() {
    [[ -x $SOCP_BIN ]] || die "socp binary not found at $SOCP_BIN (cargo build --release -p socp)"
    start_data_plane "$SOCP_BIN" "$@"
}

# start_leapio LOG ARGS...: start the all-in-one leapio in the background
# (stderr to LOG) and wait for the socket of every --ctrl sock=PATH to
# appear (30 s). Its pid and log are SOCP_PID and SOCP_LOG, as socp's.
start_leapio() {
    [[ -x $LEAPIO_BIN ]] || die "leapio binary not found at $LEAPIO_BIN (cargo build --release -p leapio)"
    start_data_plane "$LEAPIO_BIN" "$@"
}

# start_data_plane BIN LOG ARGS...
start_data_plane() {
    local bin=$1
    SOCP_LOG=$2
    shift 2
    local a socks=() s
    for a in "$@"; do
        if [[ $a == sock=* ]]; then
            s=${a#sock=}
            socks+=("${s%%,*}")
        fi
    done
    mkdir -p "$LEAPIO_RUN"
    for s in "${socks[@]}"; do rm -f "$s"; done
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$bin" "$@" 2> "$SOCP_LOG" &
    SOCP_PID=$!
    for s in "${socks[@]}"; do
        if ! wait_for_socket "$s" 30 "$SOCP_PID"; then
            local why="did not create $s within 30 s"
            kill -0 "$SOCP_PID" 2>/dev/null || why="exited before creating $s"
            log "${bin##*/} $why; its stderr ($SOCP_LOG):"
            tail -n 20 "$SOCP_LOG" | sed 's/^/    socp| /' >&2
            stop_socp >/dev/null 2>&1 || true
            return 1
        fi
    done
}

# stop_socp: SIGTERM, wait up to 15 s, then SIGKILL. Returns 0 when socp was
# still running and exited with status 0 by itself; otherwise prints why.
stop_socp() {
    local pid=$SOCP_PID
    SOCP_PID=''
    stop_pid socp "$pid" || { log "see $SOCP_LOG"; return 1; }
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

# ---- the split deployment: leapio-hostd + socp in separate processes ----
HOSTD_BIN=${HOSTD_BIN:-$LEAPIO_REPO/target/release/leapio-hostd}
HOSTD_PID=''
SPLIT_DIR=''
SPLIT_SOCP_ARGS=()

# wait_log FILE PATTERN SECS [PID]: until FILE has a line matching PATTERN
# (grep -E); fails early if PID exits.
log_has() { grep -aqE "$2" "$1" 2>/dev/null; }
wait_log() { wait_until "$3" "${4:-}" log_has "$1" "$2"; }

# start_split DIR NAME SOCK NS...: leapio-hostd serving controller NAME on
# the vfio-user socket SOCK, and socp --link serving it with namespaces NS
# (file:PATH...); logs and pid files in DIR. Waits until socp is attached.
start_split() {
    local dir=$1 name=$2 sock=$3 ns spec
    shift 3
    [[ -x $SOCP_BIN ]] || die "socp not found at $SOCP_BIN (cargo build --release -p socp)"
    start_hostd "$dir" "name=$name,sock=$sock" || return 1
    local link=$LEAPIO_RUN/hostd.sock
    spec="name=$name"
    for ns in "$@"; do spec+=",ns=$ns"; done
    SPLIT_SOCP_ARGS=(--link "unix:$link" --ctrl "$spec" --control "$LEAPIO_RUN/socp-ctl.sock"
        --metrics "unix:$LEAPIO_RUN/socp-metrics.sock")
    spawn_split_socp "$dir/socp.log"
    SOCP_LOG=$dir/socp.log
    if ! wait_log "$dir/hostd.log" 'runtime attached' 30 "$(cat "$dir/socp.pid")"; then
        log "socp did not attach to leapio-hostd; its stderr ($dir/socp.log):"
        tail -n 20 "$dir/socp.log" | sed 's/^/    socp| /' >&2
        stop_split >/dev/null 2>&1 || true
        return 1
    fi
}

# start_hostd DIR CTRL-SPEC: leapio-hostd serving one controller (its
# --ctrl spec; its vfio-user socket and, with soc=PATH, its link function's
# socket are waited for), runtimes accepted on $LEAPIO_RUN/hostd.sock; its
# log in DIR/hostd.log. Sets SPLIT_DIR and HOSTD_PID.
start_hostd() {
    local dir=$1 spec=$2 part socks=()
    [[ -x $HOSTD_BIN ]] || die "leapio-hostd not found at $HOSTD_BIN (cargo build --release -p leapio-host-driver)"
    SPLIT_DIR=$dir
    mkdir -p "$dir" "$LEAPIO_RUN"
    rm -f "$dir"/socp*.log "$dir"/socp.pid "$dir"/restarts "$dir"/restart-times
    IFS=, read -ra parts <<< "$spec"
    for part in "${parts[@]}"; do
        case $part in sock=* | soc=*) socks+=("${part#*=}") ;; esac
    done
    local link=$LEAPIO_RUN/hostd.sock s
    for s in "${socks[@]}"; do rm -f "$s"; done
    HOSTD_SPEC=$spec
    rm -f "$dir/hostd.log" "$dir/hostd.pid" "$dir/hostd-restarts" "$dir/hostd-restart-times"
    spawn_hostd
    HOSTD_PID=$(cat "$dir/hostd.pid")
    for s in "${socks[@]}" "$link"; do
        if ! wait_for_socket "$s" 30 "$HOSTD_PID"; then
            log "leapio-hostd did not start; its stderr ($dir/hostd.log):"
            tail -n 20 "$dir/hostd.log" | sed 's/^/    hostd| /' >&2
            stop_split >/dev/null 2>&1 || true
            return 1
        fi
    done
}

# spawn_hostd [ARG...]: one more leapio-hostd serving $HOSTD_SPEC (with
# --keep $HOSTD_KEEP when that is set: its descriptors and device state in
# an fd keeper, so that another can take over); its log appended to
# $SPLIT_DIR/hostd.log, its pid in $SPLIT_DIR/hostd.pid.
HOSTD_KEEP=${HOSTD_KEEP:-}
spawn_hostd() {
    local keep=()
    [[ -z $HOSTD_KEEP ]] || keep=(--keep "$HOSTD_KEEP")
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$HOSTD_BIN" --link "unix:$LEAPIO_RUN/hostd.sock" \
        --metrics "unix:$LEAPIO_RUN/hostd-metrics.sock" \
        "${keep[@]}" --ctrl "$HOSTD_SPEC" "$@" 2>> "$SPLIT_DIR/hostd.log" &
    echo $! > "$SPLIT_DIR/hostd.pid"
}

# hostd_restarter MODE GLOG TIMEOUT "PATTERN DELAY"...: for each pair, once
# the guest console GLOG shows PATTERN, wait DELAY seconds and replace
# leapio-hostd (started with HOSTD_KEEP set): MODE upgrade starts a new one
# with --handover (the running one hands everything over and exits), MODE
# crash kills it with SIGKILL and starts a new one. Run in the background;
# counts (across calls) in $SPLIT_DIR/hostd-restarts, the time from the replacement's
# start to the runtime's attach in $SPLIT_DIR/hostd-restart-times.
hostd_restarter() {
    local mode=$1 glog=$2 timeout=$3 n pat delay old t0 attached
    shift 3
    n=$(cat "$SPLIT_DIR/hostd-restarts" 2>/dev/null || echo 0)
    for spec in "$@"; do
        pat=${spec% *} delay=${spec##* }
        wait_log "$glog" "$pat" "$timeout" || { log "hostd restarter: '$pat' never appeared"; return 1; }
        sleep "$delay"
        attached=$(grep -ac 'runtime attached' "$SPLIT_DIR/hostd.log")
        old=$(cat "$SPLIT_DIR/hostd.pid")
        n=$((n + 1))
        t0=$(now)
        if [[ $mode == crash ]]; then
            kill_gone "$old"
            spawn_hostd
        else
            spawn_hostd --handover
        fi
        disown "$(cat "$SPLIT_DIR/hostd.pid")"
        attached_since "$attached"
        echo "$n" > "$SPLIT_DIR/hostd-restarts"
        echo "$(elapsed "$t0")" >> "$SPLIT_DIR/hostd-restart-times"
        if ! gone "$old"; then
            log "hostd restarter: the replaced leapio-hostd (pid $old) still runs"
            return 1
        fi
        log "leapio-hostd $mode $n: pid $old replaced by $(cat "$SPLIT_DIR/hostd.pid"), the runtime attached again after $(elapsed "$t0") s"
    done
}

# gone PID: the process has exited (a zombie counts).
gone() { [[ ! -e /proc/$1 ]] || grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }

# kill_gone PID: SIGKILL, then wait (up to 10 s) until it has exited, as a
# supervisor does before starting the next (its sockets are still open
# while it dies).
kill_gone() {
    local i=0
    kill -KILL "$1" 2>/dev/null || true
    while ! gone "$1" && ((i < 500)); do
        sleep 0.02
        i=$((i + 1))
    done
}

# attached_since N: wait (up to 30 s) until the split's host-driver log
# shows more than N runtime attachments.
attached_since() {
    local i=0
    while (($(grep -ac 'runtime attached' "$SPLIT_DIR/hostd.log") <= $1 && i < 1500)); do
        sleep 0.02
        i=$((i + 1))
    done
}

# spawn_split_socp LOG: one more socp with the split arguments; its pid in
# $SPLIT_DIR/socp.pid.
spawn_split_socp() {
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$SOCP_BIN" "${SPLIT_SOCP_ARGS[@]}" 2> "$1" &
    echo $! > "$SPLIT_DIR/socp.pid"
    # not reported by the shell when the restarter kills it
    disown $!
}

# scrape_metrics SOCK: the metrics page a daemon serves on the Unix socket
# SOCK (its --metrics unix:SOCK).
scrape_metrics() {
    "$PY" - "$1" << 'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: leapio\r\nConnection: close\r\n\r\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
head, _, body = data.partition(b"\r\n\r\n")
if not head.startswith(b"HTTP/1.1 200"):
    sys.exit("metrics: " + head.split(b"\r\n")[0].decode())
sys.stdout.write(body.decode())
PY
}

# observe GLOG TIMEOUT CTL DIR SOCK...: once the guest console GLOG shows
# fio's randread job running, what an operator would see: one table of
# `leapioctl top` over 2 s from the control socket CTL (DIR/top.txt), then
# a scrape of each metrics socket SOCK (DIR/metrics-NAME.txt). Run in the
# background.
observe() {
    local glog=$1 timeout=$2 ctl=$3 dir=$4 m
    shift 4
    wait_log "$glog" "FIO-START fio randread" "$timeout" || return 0
    sleep 1
    "$LEAPIOCTL_BIN" -s "$ctl" top --interval 2 --count 1 > "$dir/top.txt" 2>&1 || true
    for m in "$@"; do
        scrape_metrics "$m" > "$dir/metrics-$(basename "$m" .sock).txt" 2>&1 || true
    done
}

# socp_restarter GLOG TIMEOUT "PATTERN DELAY"...: for each pair, once the
# guest console GLOG shows PATTERN, wait DELAY seconds, kill -9 socp and
# start a new one (as a crash and a supervisor would): the split's socp
# process, or (with SOC_FD set) the one in the SoC VM, through its console.
# Run in the background; counts restarts in $SPLIT_DIR/restarts and logs the
# time from the kill to the new runtime's attach in $SPLIT_DIR/restart-times.
socp_restarter() {
    local glog=$1 timeout=$2 n=0 pat delay pid t0 attached
    shift 2
    for spec in "$@"; do
        pat=${spec% *} delay=${spec##* }
        wait_log "$glog" "$pat" "$timeout" || { log "restarter: '$pat' never appeared"; return 1; }
        sleep "$delay"
        attached=$(grep -ac 'runtime attached' "$SPLIT_DIR/hostd.log")
        t0=$(now)
        n=$((n + 1))
        if [[ -n ${SOC_FD:-} ]]; then
            pid="in the SoC VM"
            soc_cmd restart
        else
            pid=$(cat "$SPLIT_DIR/socp.pid")
            kill_gone "$pid"
            spawn_split_socp "$SPLIT_DIR/socp-r$n.log"
        fi
        attached_since "$attached"
        echo "$n" > "$SPLIT_DIR/restarts"
        echo "$(elapsed "$t0")" >> "$SPLIT_DIR/restart-times"
        log "socp restart $n: killed socp ($pid) with SIGKILL, the new runtime attached after $(elapsed "$t0") s"
    done
}

# ---- the SoC VM: an emulated ARM machine running socp ----
SOC_PID='' SOC_FD='' SOC_LOG=''

# start_soc LOG TIMEOUT CTRL FUNCTION-SOCK [DISK...]: boot the SoC VM (aarch64,
# TCG) in the background with the link function at FUNCTION-SOCK, running
# socp --link pci --ctrl CTRL; each DISK (a file under the root) becomes an
# NVMe SSD of the SoC (/dev/nvme0n1, ...); SOC_IOMMU=1 gives the SoC an
# IOMMU (virtio-iommu) and a GICv3 (what VFIO needs to drive an SSD from user space:
# with leapio.vfio=1 in SOC_APPEND, its init binds the first SSD to
# vfio-pci, see vm-images/soc-init); SOC_APPEND adds to its kernel command line
# (see vm-images/soc-init); SOC_NET=1 gives it a NIC on QEMU user networking
# (with leapio.net=1 in SOC_APPEND: the host's loopback is 10.0.2.2 there). Its console is LOG; commands go in through
# a FIFO (soc_cmd). Waits until socp has started in it. leapio-hostd answers
# the SoC's hypervisor once the VM's memory is mapped (it is the function's
# window): the SoC VM may boot up to 2 minutes before the VM (x-msg-timeout).
start_soc() {
    local log=$1 timeout=$2 ctrl=$3 fsock=$4 fifo KERNEL INITRD machine=virt,memory-backend=socmem disk n=0
    shift 4
    # shellcheck disable=SC1091 # written by vm-images/build-soc.sh
    . "$LEAPIO_DATA/images/soc.env"
    SOC_LOG=$log
    fifo=$log.in
    rm -f "$fifo"
    mkfifo "$fifo"
    # held open both ways: QEMU never sees the end of its console input
    exec {SOC_FD}<> "$fifo"
    local iommu=()
    # virtio-iommu rather than the SMMUv3: QEMU cannot put the link function
    # (a vfio-user device) behind its SMMUv3 (no MAP notifier there)
    [[ -n ${SOC_IOMMU:-} ]] && machine+=,gic-version=3 iommu=(-device virtio-iommu-pci)
    local args=(qemu-system-aarch64 -M "$machine" -cpu max -smp 1 -m 1G "${iommu[@]}"
        -object memory-backend-memfd,id=socmem,size=1G,share=on -accel tcg
        -display none -monitor none -serial stdio -no-reboot
        -kernel "$KERNEL" -initrd "$INITRD"
        -append "console=ttyAMA0 quiet panic=-1 leapio.ctrl=$ctrl ${SOC_APPEND:-}"
        -device "{\"driver\":\"vfio-user-pci\",\"x-msg-timeout\":120000,\"socket\":{\"path\":\"${fsock#"$LEAPIO_ROOT"}\",\"type\":\"unix\"}}")
    if [[ -n ${SOC_NET:-} ]]; then
        args+=(-nic "user,model=virtio-net-pci")
    fi
    for disk in "$@"; do
        [[ -n $disk ]] || continue
        args+=(-drive "file=${disk#"$LEAPIO_ROOT"},if=none,id=ssd$n,format=raw,cache=none,aio=io_uring"
            -device "nvme,drive=ssd$n,serial=soc-ssd$n")
        n=$((n + 1))
    done
    timeout -k 5 "$timeout" chroot "$LEAPIO_ROOT" "${args[@]}" < "$fifo" > "$log" 2> "$log.stderr" &
    SOC_PID=$!
    if ! wait_log "$log" '@@SOC SOCP-STARTED' 120 "$SOC_PID"; then
        log "the SoC VM did not start socp; its console ($log) and QEMU stderr:"
        tail -n 20 "$log" "$log.stderr" | sed 's/^/    soc| /' >&2
        return 1
    fi
}

# soc_cmd CMD: a command to the SoC VM's init (restart, stop, arch, status)
soc_cmd() { echo "$1" >&"$SOC_FD"; }

# soc_status: socp's status in the SoC VM (JSON, as leapioctl status prints
# it) and its CPU time in clock ticks, on two lines; empty when it did not
# answer within 20 s
soc_status() {
    local before
    before=$(grep -ac '@@SOC STATUS ' "$SOC_LOG")
    soc_cmd status
    local i=0
    while (($(grep -ac '@@SOC STATUS ' "$SOC_LOG") <= before)) && ((i < 200)); do
        sleep 0.1
        i=$((i + 1))
    done
    grep -a '@@SOC STATUS ' "$SOC_LOG" | tail -1 | sed 's/.*@@SOC STATUS //' | tr -d '\r'
    grep -a '@@SOC CPU ' "$SOC_LOG" | tail -1 | sed 's/.*@@SOC CPU //' | tr -d '\r'
}

# soc_arch: the SoC VM's machine, as it said at boot
soc_arch() { sed -n 's/.*@@SOC BOOT .*arch=\([^ ]*\).*/\1/p' "$SOC_LOG" | tr -d '\r' | head -1; }

# stop_soc: socp stops (SIGTERM: it lets go of the controller), the SoC VM
# powers off; killed after 30 s. Non-zero unless socp stopped with status 0.
stop_soc() {
    [[ -n $SOC_PID ]] || return 0
    local i=0 rc=0
    soc_cmd stop 2>/dev/null || true
    while kill -0 "$SOC_PID" 2>/dev/null && ((i < 300)); do
        sleep 0.1
        i=$((i + 1))
    done
    kill -0 "$SOC_PID" 2>/dev/null && { kill -TERM "$SOC_PID"; rc=1; }
    wait "$SOC_PID" 2>/dev/null || true
    SOC_PID=''
    exec {SOC_FD}>&-
    SOC_FD=''
    grep -aq '@@SOC STOPPED 0' "$SOC_LOG" || rc=1
    return $rc
}

# split_restarts: how many restarts socp_restarter did
split_restarts() { cat "$SPLIT_DIR/restarts" 2>/dev/null || echo 0; }

# stop_split: SIGTERM the current socp (it drains and lets go), then
# leapio-hostd; 15 s each, then SIGKILL. Non-zero (and says why) unless both
# were running and exited 0.
stop_split() {
    local rc=0 pid
    pid=$(cat "$SPLIT_DIR/socp.pid" 2>/dev/null || true)
    stop_pid socp "$pid" || rc=1
    # (a host-driver that replaced the first one is named in hostd.pid)
    [[ -s $SPLIT_DIR/hostd.pid ]] && HOSTD_PID=$(cat "$SPLIT_DIR/hostd.pid")
    stop_pid leapio-hostd "$HOSTD_PID" || rc=1
    HOSTD_PID=''
    rm -f "$SPLIT_DIR/hostd.pid"
    # a host-driver that stops lets its fd keeper go
    if [[ -n $HOSTD_KEEP ]] && pkill -f -- "--fd-keeper $HOSTD_KEEP" 2>/dev/null; then
        log "the fd keeper at $HOSTD_KEEP outlived its host-driver's stop"
        rc=1
    fi
    rm -f "$SPLIT_DIR/socp.pid"
    return $rc
}

# stop_pid NAME PID: SIGTERM, wait up to 15 s, SIGKILL after that. Returns 0
# when the process was running and exited by itself (with status 0, when it
# is our child and its status can be known); otherwise says why.
stop_pid() {
    local name=$1 pid=$2 i=0 rc=0
    [[ -n $pid ]] || return 0
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || rc=$?
        log "$name (pid $pid) had already exited (status $rc) before it was stopped"
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
        log "$name (pid $pid) did not exit within 15 s of SIGTERM (killed)"
        return 1
    fi
    wait "$pid" 2>/dev/null || rc=$?
    # 127: not our child (started by a subshell); its status is unknown
    if ((rc != 0 && rc != 127)); then
        log "$name (pid $pid) exited with status $rc after SIGTERM"
        return 1
    fi
}

# dhchap_key LEN XX: a random DH-HMAC-CHAP secret as `nvme gen-dhchap-key`
# prints it: DHHC-1:XX:base64(key || CRC-32 little-endian): with a LEN-byte
# key (32, 48, 64) and hash transformation XX (00 none, 01..03 SHA-256..512)
dhchap_key() {
    "$PY" -c '
import base64, os, sys, zlib
k = os.urandom(int(sys.argv[1]))
print("DHHC-1:%s:%s:" % (sys.argv[2], base64.b64encode(k + zlib.crc32(k).to_bytes(4, "little")).decode()))
' "$1" "$2"
}

# rdma_programs_cpio DIR OUT: socp, leapio, leapio-perf, leapioctl and
# leapio-hostile (release, stripped) and the C runtime's libgcc_s, staged in DIR, as a cpio
# archive OUT to append to the RDMA guest's initramfs (run-guest.sh
# --extra-initrd)
rdma_programs_cpio() {
    local st=$1 out=$2 b bins=(socp leapio leapio-perf leapioctl leapio-hostile)
    for b in "${bins[@]}"; do
        [[ -x $LEAPIO_REPO/target/release/$b ]] || die "no target/release/$b (cargo build --release -p socp -p leapio -p leapio-tests -p leapioctl)"
    done
    rm -rf "$st"
    mkdir -p "$st/usr/bin" "$st/usr/lib/x86_64-linux-gnu"
    for b in "${bins[@]}"; do
        strip -o "$st/usr/bin/$b" "$LEAPIO_REPO/target/release/$b"
    done
    cp -L "$LEAPIO_ROOT/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$st/usr/lib/x86_64-linux-gnu/"
    (cd "$st" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0) > "$out"
}
