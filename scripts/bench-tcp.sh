#!/usr/bin/env bash
# The NVMe/TCP target's efficiency: CPU per I/O and latency of
# `socp --tcp-target` on a RAM namespace over loopback, beside a local RAM
# namespace measured in the same run.
#
# Target: socp --tcp-target (one poller) pinned to CPU 0. Host: leapio-perf
# --backend nvme-tcp:... pinned to CPU 1: the harness thread is the NVMe/TCP
# host (socp's own host backend, driven directly: one thread, the cheapest
# load a host can make). CPU per I/O is the target poller's thread CPU time
# (user + system, from /proc) over the I/Os of the measured window.
# Local baselines: socp's vfio-user controller on a RAM namespace
# (leapio-perf --spawn ns=ram:1G, poller on CPU 0) and the RAM backend
# driven directly (--backend ram:1G), on the same CPUs.
# The floor: tests/examples/tcp_floor.rs, two threads on the same CPUs
# exchanging 72-byte requests for 4 KiB + 24-byte answers over loopback TCP
# and nothing else (the kernel's cost, with no NVMe at all).
# Workload: 4 KiB random reads, QD 1 and QD 32.
#
# usage: bash scripts/bench-tcp.sh [--seconds S] [--baseline REV] [--out FILE]
#   --baseline REV  also measure socp built at git revision REV (side by side)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

secs=5 out='' baseline=''
while (($#)); do
    case $1 in
    --seconds) secs=$2; shift ;;
    --out) out=$2; shift ;;
    --baseline) baseline=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-tcp.sh: unknown option $1 (--help)" ;;
    esac
    shift
done
(($(nproc) >= 2)) || die "bench-tcp.sh needs 2 CPUs (target and host apart)"
cd "$LEAPIO_REPO"
log "building socp and leapio-perf (release)"
cargo build --release --quiet -p socp --bin socp -p leapio-tests --bin leapio-perf --example tcp_floor || die "cargo build failed"
rel=$LEAPIO_REPO/target/release
work=$(mktemp -d /tmp/leapio-bench-tcp.XXXXXX)
tgt_pid=''
cleanup() {
    [[ -n $tgt_pid ]] && kill "$tgt_pid" 2>/dev/null && wait "$tgt_pid" 2>/dev/null
    [[ -d $work/base-src ]] && git worktree remove --force "$work/base-src" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

declare -A socps=([current]=$rel/socp)
order=(current)
if [[ -n $baseline ]]; then
    rev=$(git rev-parse --short "$baseline") || die "no revision $baseline"
    log "building socp at $rev (baseline)"
    git worktree add --quiet --detach "$work/base-src" "$rev"
    (cd "$work/base-src" && CARGO_TARGET_DIR=$LEAPIO_REPO/target/bench-baseline \
        cargo build --release --quiet -p socp --bin socp) || die "building $rev failed"
    socps[$rev]=$LEAPIO_REPO/target/bench-baseline/release/socp
    order=("$rev" current)
fi

port=${LEAPIO_TCP_PORT:-4434}
nqn=nqn.2026-11.io.leapio:bench-tcp
# perf ARGS...: one leapio-perf run; prints "iops p50 p99 tcpu_s tcpu_per_io"
perf() {
    "$rel/leapio-perf" "$@" -o 4k -w randread -t "$secs" --warmup 1 --json | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
if d["errors"] or d["lost"]:
    sys.exit("leapio-perf: %d errors, %d lost" % (d["errors"], d["lost"]))
c = d.get("remote_cpu_s")
if c is None:
    c = d.get("target_cpu_s")
per = d.get("remote_cpu_us_per_io") or d.get("target_cpu_us_per_io")
f = lambda v: "-" if v is None else "%.3f" % v
print(round(d["iops"]), d["latency"]["p50_us"], d["latency"]["p99_us"], f(c), f(per))'
}

rows=()
declare -A p50s
row() { # name qd iops p50 p99 cpu_s per_io
    local busy=-
    [[ $6 != - ]] && busy=$(awk -v c="$6" -v s="$secs" 'BEGIN { printf "%.0f%%", 100 * c / s }')
    p50s[$1/$2]=$4
    rows+=("$1|$2|$3|$4|$5|$7|$busy")
    log "$1 QD$2: $3 IOPS, p50 $4 us, p99 $5 us, target CPU $7 us/IO ($busy busy)"
}

for qd in 1 32; do
    read -r iops p50 p99 c per <<< "$(perf --spawn ns=ram:1G --cpu 1 --target-cpu 0 -q "$qd")"
    row "local RAM namespace (socp vfio-user)" "$qd" "$iops" "$p50" "$p99" "$c" "$per"
    read -r iops p50 p99 c per <<< "$(perf --backend ram:1G --cpu 1 -q "$qd")"
    row "RAM backend, driven directly" "$qd" "$iops" "$p50" "$p99" - -
done
for qd in 1 32; do
    read -r rt p50 p99 per <<< "$("$rel/examples/tcp_floor" "$secs" "$qd" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
print(round(d["round_trips"] / '"$secs"'), d["p50_us"], d["p99_us"], "%.3f" % d["answering_cpu_us_per_answer"])')"
    row "loopback TCP alone, no NVMe (tcp_floor)" "$qd" "$rt" "$p50" "$p99" - "$per"
done
for name in "${order[@]}"; do
    taskset -c 0 "${socps[$name]}" --tcp-target "listen=127.0.0.1:$port,nqn=$nqn,ns=ram:1G" \
        --tcp-pollers 1 > "$work/target.log" 2>&1 &
    tgt_pid=$!
    wait_log "$work/target.log" 'NVMe/TCP target listening' 30 "$tgt_pid" || die "the target did not start: $(cat "$work/target.log")"
    for qd in 1 32; do
        read -r iops p50 p99 c per <<< "$(perf --backend "nvme-tcp:127.0.0.1:$port/$nqn" --cpu 1 -q "$qd" --remote-pid "$tgt_pid")"
        row "NVMe/TCP target, socp $name" "$qd" "$iops" "$p50" "$p99" "$c" "$per"
    done
    kill "$tgt_pid"
    wait "$tgt_pid" 2>/dev/null || true
    tgt_pid=''
done

table="| what | QD | IOPS | p50 us | p99 us | target CPU us/IO | target thread busy |
|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do table+=$'\n'"| ${r//|/ | } |"; done
cur=${p50s["NVMe/TCP target, socp current/1"]}
loc=${p50s["local RAM namespace (socp vfio-user)/1"]}
dir=${p50s["RAM backend, driven directly/1"]}
gap="QD1 p50 above the local RAM namespace: $(awk -v a="$cur" -v b="$loc" 'BEGIN { printf "%.1f", a - b }') us; above the RAM backend driven directly: $(awk -v a="$cur" -v b="$dir" 'BEGIN { printf "%.1f", a - b }') us"
echo "$table"
echo "$gap"
if [[ -n $out ]]; then
    {
        echo "# NVMe/TCP target efficiency"
        echo
        echo "Generated by \`bash scripts/bench-tcp.sh --seconds $secs${baseline:+ --baseline $baseline}\` on $(nproc) CPUs ($(uname -r)): 4 KiB random reads from a RAM namespace. The target (\`socp --tcp-target\`, one poller) on CPU 0; the host on CPU 1 is leapio-perf driving socp's NVMe/TCP host backend from its own thread (\`--backend nvme-tcp:...\`); target CPU per I/O is the poller thread's user + system time over the I/Os of the window, including the kernel's TCP work done in its context (on loopback, a send also runs the receiving side's protocol processing). \"busy\" is that time over the window: below 100% the host was the bottleneck and the poller was partly polling idle sockets (it busy-polls for 50 us after its last work). Local baselines on the same CPUs: socp's vfio-user controller on a RAM namespace (\`--spawn ns=ram:1G\`, poller on CPU 0) and the RAM backend driven directly from the harness thread."
        echo
        echo "$table"
        echo
        echo "$gap."
    } > "$out"
    log "report: $out"
fi
