#!/usr/bin/env bash
# One runtime, many VMs: per count N, a fresh split deployment
# (one leapio-hostd with a control and a link socket, one socp --link with
# a control socket), N controllers added on both sides (hostd:
# name=vmI,sock=DIR/vmI.sock; socp: name=vmI,ns=ram:SIZE), then
# leapio-scale plays the N guests from one process: what the idle guests
# cost both processes (threads, RSS, fds, CPU) and what one busy guest
# gets (QD1 latency, QD32 IOPS, first read after quiet). Then, per
# all-busy count, every controller driven at QD8 (aggregate IOPS,
# fairness). A table, then as the last line one JSON object
# {"runs":[...],"all_busy":[...],"policies":[...]}.
#
# usage: bash scripts/bench-scale.sh [COUNT...]      (default 1 10 100 1000)
#   BENCH_SCALE_COUNTS="1 10 100 1000"   the counts (when none are given)
#   BENCH_SCALE_ALL_BUSY="1 10 100"      the all-busy counts ("" for none)
#   BENCH_SCALE_ADD=start                how controllers are added:
#       start      --ctrl options when both processes start
#       leapioctl  one leapioctl ctrl-add per controller and side
#       rpc        every ctrl-add on one control connection per side
#   BENCH_SCALE_POLICIES="busy adaptive sleep"   socp --poll policies run
#                                        at BENCH_SCALE_POLICY_VMS (1000)
#                                        for the idle cost and the first
#                                        command after idleness ("" for none)
#   BENCH_SCALE_NS=ram:64M               each controller's namespace
#   BENCH_SCALE_SECONDS=3                each busy measurement
#   BENCH_SCALE_IDLE=5                   the idle window
#   BENCH_SCALE_ATTACH_BUDGET=240        leapio-scale stops attaching guests
#                                        after that long and measures the rest
#   BENCH_SCALE_TIMEOUT=600              one leapio-scale run, seconds
#   BENCH_SCALE_RESULTS=FILE             also append every record there
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

case ${1:-} in
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
counts=("$@")
((${#counts[@]})) || read -ra counts <<< "${BENCH_SCALE_COUNTS:-1 10 100 1000}"
read -ra busy_counts <<< "${BENCH_SCALE_ALL_BUSY-1 10 100}"
read -ra policies <<< "${BENCH_SCALE_POLICIES-busy adaptive sleep}"
POLICY_VMS=${BENCH_SCALE_POLICY_VMS:-1000}
POLL=adaptive
ADD=${BENCH_SCALE_ADD:-start}
NS=${BENCH_SCALE_NS:-ram:64M}
SECS=${BENCH_SCALE_SECONDS:-3}
IDLE=${BENCH_SCALE_IDLE:-5}
RUN_TIMEOUT=${BENCH_SCALE_TIMEOUT:-600}
BUDGET=${BENCH_SCALE_ATTACH_BUDGET:-240}
case $ADD in leapioctl | rpc | start) ;; *) die "BENCH_SCALE_ADD: leapioctl, rpc or start" ;; esac
for n in "${counts[@]}" "${busy_counts[@]}"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "not a count: $n"
done

cd "$LEAPIO_REPO"
SCALE=$LEAPIO_REPO/target/release/leapio-scale
if [[ ! -x $SCALE || ! -x $HOSTD_BIN || ! -x $SOCP_BIN || ! -x $LEAPIOCTL_BIN ]]; then
    log "building leapio-hostd, socp, leapioctl and leapio-scale (release)"
    cargo build --release --quiet -p leapio-host-driver --bin leapio-hostd -p socp --bin socp \
        -p leapioctl --bin leapioctl -p leapio-tests --bin leapio-scale
fi

# Descriptors: each controller holds about 10 in leapio-hostd (vfio-user
# listener and connection, guest memory, doorbell page, queue state,
# interrupt eventfds, link fds) and as many in socp; the harness about 6
# per guest. The hard limit is what all three can reach.
max=0
for n in "${counts[@]}" "${busy_counts[@]}"; do
    if ((n > max)); then max=$n; fi
done
need=$((max * 12 + 256))
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < need)); then
    log "warning: ulimit -Hn is $hard; $max controllers may need about $need descriptors per process"
fi
# the soft limit only: leapio-scale raises its own to the hard one
ulimit -Sn "$hard"
log "ulimit -n $(ulimit -Sn) (about $need needed for $max controllers: 12 per controller + 256)"

work=$(mktemp -d /tmp/leapio-bench-scale.XXXXXX)
results=$work/results.jsonl
: > "$results"
HPID='' SPID=''
# stop NAME PID: SIGTERM, 15 s, SIGKILL; always waited for
stop() {
    [[ -n $2 ]] || return 0
    stop_pid "$1" "$2" >/dev/null 2>&1 || true
}
teardown() {
    stop socp "$SPID"
    stop leapio-hostd "$HPID"
    SPID='' HPID=''
}
cleanup() {
    teardown
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# add_ctrls SOCK SPEC...: ctrl-add each SPEC on the control socket SOCK
add_ctrls() {
    local sock=$1
    shift
    if [[ $ADD == rpc ]]; then
        # One connection, one request per line, each answer read before
        # the next request (as leapioctl does, without a process each).
        "$PY" - "$sock" "$@" <<'EOF'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
f = s.makefile("rw")
for i, spec in enumerate(sys.argv[2:]):
    f.write(json.dumps({"jsonrpc": "2.0", "id": i, "method": "ctrl_add", "params": {"spec": spec}}) + "\n")
    f.flush()
    r = json.loads(f.readline())
    if "error" in r:
        sys.exit("ctrl_add %s: %s" % (spec, r["error"].get("message")))
EOF
    else
        local spec
        for spec in "$@"; do
            timeout 60 "$LEAPIOCTL_BIN" -s "$sock" ctrl-add "$spec" > /dev/null || {
                log "leapioctl ctrl-add $spec failed"
                return 1
            }
        done
    fi
}

# attached LOG: controllers the runtime serves (its log's count)
attached() { grep -ac 'attached: serving its I/O queues' "$1" 2>/dev/null || true; }

# deploy DIR N: leapio-hostd and socp with N controllers; sets HPID, SPID
# and ATTACH_S; on failure sets WHY and returns 1.
deploy() {
    local dir=$1 n=$2 i hspecs=() sspecs=() hargs=() sargs=() t0 deadline
    mkdir -p "$dir"
    for ((i = 0; i < n; i++)); do
        hspecs+=("name=vm$i,sock=$dir/vm$i.sock,io-queues=2")
        sspecs+=("name=vm$i,ns=$NS")
    done
    if [[ $ADD == start ]]; then
        for i in "${hspecs[@]}"; do hargs+=(--ctrl "$i"); done
        for i in "${sspecs[@]}"; do sargs+=(--ctrl "$i"); done
    fi
    t0=$(now)
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$HOSTD_BIN" --link "unix:$dir/link.sock" \
        --control "$dir/hostd-ctl.sock" "${hargs[@]}" 2> "$dir/hostd.log" &
    HPID=$!
    if ! wait_for_socket "$dir/hostd-ctl.sock" 30 "$HPID" || ! wait_for_socket "$dir/link.sock" 30 "$HPID"; then
        WHY="leapio-hostd did not start: $(tail -n 3 "$dir/hostd.log" | tr '\n' ' ')"
        return 1
    fi
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$SOCP_BIN" --link "unix:$dir/link.sock" \
        --control "$dir/socp-ctl.sock" --poll "$POLL" "${sargs[@]}" 2> "$dir/socp.log" &
    SPID=$!
    if ! wait_for_socket "$dir/socp-ctl.sock" 30 "$SPID"; then
        WHY="socp did not start: $(tail -n 3 "$dir/socp.log" | tr '\n' ' ')"
        return 1
    fi
    if [[ $ADD != start ]]; then
        if ! add_ctrls "$dir/hostd-ctl.sock" "${hspecs[@]}"; then
            WHY="ctrl-add on leapio-hostd failed after $(grep -ac 'controller added' "$dir/hostd.log") controllers: $(tail -n 2 "$dir/hostd.log" | tr '\n' ' ')"
            return 1
        fi
        if ! add_ctrls "$dir/socp-ctl.sock" "${sspecs[@]}"; then
            WHY="ctrl-add on socp failed after $(attached "$dir/socp.log") controllers: $(tail -n 2 "$dir/socp.log" | tr '\n' ' ')"
            return 1
        fi
    fi
    # every controller served: 30 s, and 0.1 s more per controller
    deadline=$(awk -v a="$(now)" -v n="$n" 'BEGIN { printf "%d", a + 30 + n / 10 }')
    while (($(attached "$dir/socp.log") < n)); do
        if ! kill -0 "$SPID" 2>/dev/null || ! kill -0 "$HPID" 2>/dev/null || (($(date +%s) > deadline)); then
            WHY="$(attached "$dir/socp.log") of $n controllers served after $(elapsed "$t0") s"
            kill -0 "$SPID" 2>/dev/null || WHY+=" (socp exited)"
            kill -0 "$HPID" 2>/dev/null || WHY+=" (leapio-hostd exited)"
            return 1
        fi
        sleep 0.1
    done
    ATTACH_S=$(elapsed "$t0")
}

# record N KIND LINE...: the harness's JSON, with the deployment's figures
record() {
    "$PY" -c '
import json, sys
n, kind, attach, add, load, why, line, poll = sys.argv[1:9]
d = json.loads(line) if line else {"vms": int(n), "failed": why}
d.update(kind=kind, deploy_attach_s=float(attach) if attach else None, add=add,
         loadavg_1m=float(load), poll=poll)
print(json.dumps(d))' "$@" "$POLL" >> "$results"
}

# one N KIND ARGS...: deploy N controllers, run leapio-scale, tear down
one() {
    local n=$1 kind=$2 dir out rc=0 line='' load
    shift 2
    dir=$work/$kind-$n
    WHY='' ATTACH_S=''
    load=$(cut -d' ' -f1 /proc/loadavg)
    log "$kind, $n controllers: starting leapio-hostd and socp, adding them ($ADD)"
    if deploy "$dir" "$n"; then
        log "$n controllers added and served in $ATTACH_S s; leapio-scale"
        out=$dir/scale.out
        timeout -k 10 "$RUN_TIMEOUT" "$SCALE" --sock-dir "$dir" --vms "$n" --hostd-pid "$HPID" \
            --socp-pid "$SPID" --seconds "$SECS" --idle-seconds "$IDLE" --attach-budget "$BUDGET" "$@" > "$out" 2> "$dir/scale.err" || rc=$?
        sed 's/^/    /' "$out" | grep -v '^    {' >&2 || true
        grep -v 'RLIMIT_NOFILE' "$dir/scale.err" | sed 's/^/    /' >&2 || true
        line=$(grep '^{' "$out" | tail -n 1 || true)
        if ((rc != 0)) && [[ -z $line ]]; then
            WHY="leapio-scale failed (status $rc): $(tail -n 3 "$dir/scale.err" | tr '\n' ' ')"
        fi
    fi
    if [[ -n $WHY ]]; then
        log "$kind, $n controllers: $WHY"
        line=''
        local h s
        h=$(awk '/^Threads/ { t = $2 } END { print t }' "/proc/$HPID/status" 2>/dev/null || true)
        s=$(awk '/^Threads/ { t = $2 } END { print t }' "/proc/$SPID/status" 2>/dev/null || true)
        [[ -z $h$s ]] || WHY+=" (then: leapio-hostd $h threads, $(ls "/proc/$HPID/fd" 2>/dev/null | wc -l) fds; socp $s threads, $(ls "/proc/$SPID/fd" 2>/dev/null | wc -l) fds)"
    fi
    record "$n" "$kind" "$ATTACH_S" "$ADD" "$load" "$WHY" "$line"
    teardown
}

for n in "${counts[@]}"; do one "$n" idle; done
for n in "${busy_counts[@]}"; do one "$n" all-busy --all-busy; done
for POLL in "${policies[@]}"; do one "$POLICY_VMS" policy; done
POLL=adaptive
[[ -z ${BENCH_SCALE_RESULTS:-} ]] || cat "$results" >> "$BENCH_SCALE_RESULTS"

"$PY" - "$results" <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
runs = [r for r in recs if r["kind"] == "idle"]
busy = [r for r in recs if r["kind"] == "all-busy"]
pol = [r for r in recs if r["kind"] == "policy"]
def f(v, fmt="%.1f"):
    return "-" if v is None else (fmt % v if isinstance(v, float) else str(v))
print("idle guests, one busy (4 KiB randread, RAM namespaces)")
print("%6s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s %10s %9s" % (
    "VMs", "add s", "hostd", "socp", "hostd", "socp", "hostd", "socp", "idle", "QD1 p50", "QD1 p99", "QD32", "wake", "load"))
print("%6s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s %10s %9s" % (
    "", "", "threads", "threads", "RSS MiB", "RSS MiB", "fds", "fds", "CPU %", "us", "us", "IOPS", "us", "1m"))
for r in runs:
    if "failed" in r:
        print("%6d  failed: %s" % (r["vms"], r["failed"]))
        continue
    print("%6d %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %9s %10s %9s" % (
        r["vms"], f(r.get("deploy_attach_s")), f(r.get("hostd_threads")), f(r.get("socp_threads")),
        f(r.get("hostd_rss_mib")), f(r.get("socp_rss_mib")), f(r.get("hostd_fds")), f(r.get("socp_fds")),
        f(r.get("idle_cpu_pct")), f(r.get("busy_qd1_p50_us"), "%.2f"), f(r.get("busy_qd1_p99_us"), "%.2f"),
        f(r.get("busy_qd32_iops"), "%.0f"), f(r.get("first_cmd_after_idle_us")), f(r.get("loadavg_1m"), "%.2f")))
    if r.get("limit"):
        print("        limit: %s" % r["limit"].replace("\n", "\n        "))
    if r.get("vms_attached", r["vms"]) != r["vms"]:
        print("        only %d of %d guests attached" % (r["vms_attached"], r["vms"]))
if busy:
    print("every controller busy, QD8 each, round robin from one thread")
    print("%6s %12s %12s %12s %9s %9s %9s" % ("VMs", "IOPS", "min/ctrl", "max/ctrl", "max/min", "socp CPU%", "load 1m"))
    for r in busy:
        if "failed" in r:
            print("%6d  failed: %s" % (r["vms"], r["failed"]))
            continue
        print("%6d %12s %12s %12s %9s %9s %9s" % (r["vms"], f(r.get("iops"), "%.0f"), f(r.get("min_ctrl_iops"), "%.0f"),
              f(r.get("max_ctrl_iops"), "%.0f"), f(r.get("max_min_ratio"), "%.2f"), f(r.get("socp_busy_cpu_pct")),
              f(r.get("loadavg_1m"), "%.2f")))
if pol:
    print("socp --poll policies: idle guests, one busy")
    print("%10s %6s %10s %10s %12s %10s" % ("policy", "VMs", "idle CPU%", "QD1 p50", "first cmd", "QD32"))
    print("%10s %6s %10s %10s %12s %10s" % ("", "", "both", "us", "after 1 s us", "IOPS"))
    for r in pol:
        if "failed" in r:
            print("%10s %6d  failed: %s" % (r["poll"], r["vms"], r["failed"]))
            continue
        print("%10s %6d %10s %10s %12s %10s" % (r["poll"], r["vms"], f(r.get("idle_cpu_pct"), "%.2f"),
              f(r.get("busy_qd1_p50_us"), "%.2f"), f(r.get("first_cmd_after_idle_us"), "%.0f"),
              f(r.get("busy_qd32_iops"), "%.0f")))
print(json.dumps({"runs": runs, "all_busy": busy, "policies": pol}))
EOF
