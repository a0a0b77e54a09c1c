#!/usr/bin/env bash
# The cost of the split, measured side by side: the all-in-one socp and the
# split (leapio-hostd + socp --link in another process), both serving a RAM
# namespace, 4 KiB randread at QD1 and QD128 with leapio-perf, in
# alternating rounds so that the machine's drift hits both alike; medians.
# Then the time from kill -9 of the split's socp to the first completion
# served by its successor (QD1 on a file in tmpfs, three times).
#
# usage: bash scripts/bench-split.sh [--results FILE] [--baseline SOCP]
#   --results FILE   append each run as a JSON line (bench.sh's format)
#   --baseline SOCP  a third contender: another all-in-one socp binary (e.g.
#                    one built from an older commit), run the same way
#   BENCH_SPLIT_SECONDS=5 BENCH_SPLIT_ROUNDS=3 BENCH_RAM_SIZE=1G
#   BENCH_CPUS="0 1"  target CPU and harness CPU (as bench.sh)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

results='' baseline=''
while (($#)); do
    case $1 in
    --results) results=$2; shift ;;
    --baseline) baseline=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-split.sh: unknown option $1 (--help)" ;;
    esac
    shift
done
T=${BENCH_SPLIT_SECONDS:-5}
ROUNDS=${BENCH_SPLIT_ROUNDS:-3}
SIZE=${BENCH_RAM_SIZE:-1G}
pin=()
if (($(nproc) >= 2)); then
    read -r tcpu hcpu <<< "${BENCH_CPUS-0 1}"
    [[ -n ${hcpu:-} ]] && pin=(--cpu "$hcpu" --target-cpu "$tcpu")
fi
cd "$LEAPIO_REPO"
log "building socp, leapio, leapio-hostd and leapio-perf (release)"
cargo build --release --quiet -p socp --bin socp -p leapio --bin leapio -p leapio-host-driver --bin leapio-hostd \
    -p leapio-tests --bin leapio-perf
PERF=$LEAPIO_REPO/target/release/leapio-perf
work=$(mktemp -d /tmp/leapio-bench-split.XXXXXX)
[[ -n $results ]] || results=$work/results.jsonl
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -z $HOSTD_PID ]] || stop_split >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# aio NAME BINARY: an all-in-one (leapio; socp before it had its own
# binary) with one poller on a RAM namespace
declare -A SOCKS PIDS
aio() {
    local name=$1 bin=$2 sock=$work/$1.sock
    NO_COLOR=1 "$bin" --pollers 1 --ctrl "sock=$sock,ns=ram:$SIZE" 2> "$work/$name.log" &
    PIDS[$name]=$!
    pids+=($!)
    wait_for_socket "$sock" 30 "$!" || die "$name: socp did not start (see $work/$name.log)"
    SOCKS[$name]=$sock
}
aio all-in-one "$LEAPIO_BIN"
[[ -z $baseline ]] || aio baseline "$baseline"
start_split "$work/split" bench "$work/split.sock" "ram:$SIZE" || die "leapio-hostd + socp did not start"
SOCKS[split]=$work/split.sock
PIDS[split]=$(cat "$work/split/socp.pid")
names=(all-in-one split)
[[ -z $baseline ]] || names+=(baseline)
for n in "${names[@]}"; do
    "$PERF" --sock "${SOCKS[$n]}" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
        || die "prefilling $n failed"
done

# run NAME QD ROUND: one leapio-perf run, kept as a JSON line
run() {
    local n=$1 qd=$2 r=$3 out
    local cmd=("$PERF" --sock "${SOCKS[$n]}" --socp-pid "${PIDS[$n]}" -q "$qd" -o 4k -w randread
        "${pin[@]}" -t "$T" --warmup 1 --json)
    out=$("${cmd[@]}") || die "leapio-perf failed: ${cmd[*]}"
    "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update(scenario="split-ab", label="%s QD%s" % (sys.argv[1], sys.argv[2]), round=int(sys.argv[3]),
         cmd=sys.argv[4].replace(sys.argv[5] + "/", ""), tool="leapio-perf")
print(json.dumps(d))' "$n" "$qd" "$r" "${cmd[*]}" "$LEAPIO_REPO" <<< "$out" >> "$results"
}
for r in $(seq "$ROUNDS"); do
    for qd in 1 128; do
        for n in "${names[@]}"; do
            log "round $r: $n QD$qd"
            run "$n" "$qd" "$r"
        done
    done
done
for p in "${pids[@]}"; do stop_pid socp "$p" || true; done
pids=()
stop_split || log "warning: the split did not stop cleanly"

# kill -9 to the first completion by the successor
rf=${BENCH_SHM_DIR:-/dev/shm}/leapio-bench-restart-$$.img
truncate -s 256M "$rf"
start_split "$work/restart" bench-restart "$work/restart.sock" "file:$rf" || die "leapio-hostd + socp did not start"
for i in 1 2 3; do
    rcmd=("$PERF" --sock "$work/restart.sock" -q 1 -o 4k -w randread -t 4 --warmup 0.5 --json)
    "${rcmd[@]}" > "$work/restart-$i.json" &
    rperf=$!
    sleep 2
    kill -KILL "$(cat "$work/restart/socp.pid")"
    spawn_split_socp "$work/restart/socp-r$i.log"
    wait "$rperf" || die "leapio-perf failed during the restart run"
    "$PY" -c '
import json, sys
d = json.load(open(sys.argv[1]))
d.update(scenario="restart", label="kill -9 + restart %s" % sys.argv[2], cmd=sys.argv[3], tool="leapio-perf")
print(json.dumps(d))' "$work/restart-$i.json" "$i" "${rcmd[*]/$LEAPIO_REPO\//} (socp killed -9 and started again 2 s in)" >> "$results"
done
stop_split || log "warning: the split did not stop cleanly"
rm -f "$rf"

"$PY" - "$results" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ab = [r for r in runs if r.get("scenario") == "split-ab"]
def med(label, f):
    v = [f(r) for r in ab if r["label"] == label]
    return statistics.median(v) if v else None
print("4 KiB randread, RAM namespace, one poller; medians of %d rounds" % max([r["round"] for r in ab] or [0]))
print("  %-18s %12s %9s %9s %12s" % ("run", "IOPS", "p50 us", "p99 us", "poller us/IO"))
for label in sorted({r["label"] for r in ab}, key=lambda l: (int(l.split("QD")[1]), l)):
    print("  %-18s %12.0f %9.2f %9.2f %12.3f" % (label, med(label, lambda r: r["iops"]),
          med(label, lambda r: r["latency"]["p50_us"]), med(label, lambda r: r["latency"]["p99_us"]),
          med(label, lambda r: r.get("target_cpu_us_per_io") or 0)))
for qd in (1, 128):
    a, s = "all-in-one QD%d" % qd, "split QD%d" % qd
    if med(a, lambda r: 1):
        print("  split vs all-in-one, QD%d: p50 %+.2f us, IOPS %.1f%%" % (
            qd, med(s, lambda r: r["latency"]["p50_us"]) - med(a, lambda r: r["latency"]["p50_us"]),
            100 * med(s, lambda r: r["iops"]) / med(a, lambda r: r["iops"])))
for r in runs:
    if r.get("scenario") == "restart":
        print("  %s: kill to first completion %.1f ms" % (r["label"], r["latency"]["max_us"] / 1000))
EOF
