#!/usr/bin/env bash
# What the storage services cost, side by side: all-in-one leapio
# processes (one poller each) serving one namespace each, made of RAM
# children: a plain `ram:` namespace, `raid0:(ram|ram)`, `concat:(ram|ram)`
# and `crypt:(ram)?key=...` (a 64-byte key: XTS-AES-256). 4 KiB randread and
# randwrite at QD32 and QD128 with leapio-perf, in alternating rounds so
# that the machine's drift hits all alike; medians. Poller CPU per I/O is
# bench-split's: the on-CPU time of the pollers (and their io_uring
# workers) over the I/Os done.
#
# usage: bash scripts/bench-services.sh [--results FILE]
#   --results FILE   append each run as a JSON line (bench.sh's format)
#   BENCH_SVC_SECONDS=5 BENCH_SVC_ROUNDS=3 BENCH_RAM_SIZE=1G (the whole
#   namespace: each of two children holds half)
#   BENCH_CPUS="0 1"  target CPU and harness CPU (as bench.sh)
# Builds leapio and leapio-perf (release) into $CARGO_TARGET_DIR (default
# target/ of the repository) and runs them from there.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

results=''
while (($#)); do
    case $1 in
    --results) results=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-services.sh: unknown option $1 (--help)" ;;
    esac
    shift
done
T=${BENCH_SVC_SECONDS:-5}
ROUNDS=${BENCH_SVC_ROUNDS:-3}
SIZE=${BENCH_RAM_SIZE:-1G}
HALF=$(($(numfmt --from=iec "$SIZE") >> 21))M
pin=()
if (($(nproc) >= 2)); then
    read -r tcpu hcpu <<< "${BENCH_CPUS-0 1}"
    [[ -n ${hcpu:-} ]] && pin=(--cpu "$hcpu" --target-cpu "$tcpu")
fi
cd "$LEAPIO_REPO"
rel=$(realpath -m "${CARGO_TARGET_DIR:-target}")/release
log "building leapio and leapio-perf (release, in $rel)"
cargo build --release --quiet -p leapio --bin leapio -p leapio-tests --bin leapio-perf
AIO=$rel/leapio PERF=$rel/leapio-perf
work=$(mktemp -d /tmp/leapio-bench-services.XXXXXX)
[[ -n $results ]] || results=$work/results.jsonl
head -c 64 /dev/urandom > "$work/key"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# serve NAME SPEC: an all-in-one leapio with one poller serving SPEC
declare -A SOCKS PIDS SPECS
serve() {
    local name=$1 sock=$work/$1.sock
    NO_COLOR=1 "$AIO" --pollers 1 --ctrl "sock=$sock,ns=$2" 2> "$work/$name.log" &
    PIDS[$name]=$!
    pids+=($!)
    wait_for_socket "$sock" 30 "$!" || die "$name: leapio did not start (see $work/$name.log: $(tail -1 "$work/$name.log"))"
    SOCKS[$name]=$sock SPECS[$name]=${2//$work\/key/KEYFILE}
}
names=(ram raid0 concat crypt)
serve ram "ram:$SIZE"
serve raid0 "raid0:(ram:$HALF|ram:$HALF)"
serve concat "concat:(ram:$HALF|ram:$HALF)"
serve crypt "crypt:(ram:$SIZE)?key=$work/key"
for n in "${names[@]}"; do
    "$PERF" --sock "${SOCKS[$n]}" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
        || die "prefilling $n failed"
done

# run NAME RW QD ROUND: one leapio-perf run, kept as a JSON line
run() {
    local n=$1 rw=$2 qd=$3 r=$4 out
    local cmd=("$PERF" --sock "${SOCKS[$n]}" --socp-pid "${PIDS[$n]}" -q "$qd" -o 4k -w "$rw"
        "${pin[@]}" -t "$T" --warmup 1 --json)
    out=$("${cmd[@]}") || die "leapio-perf failed: ${cmd[*]}"
    "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update(scenario="services", label="%s %s QD%s" % tuple(sys.argv[1:4]), service=sys.argv[1],
         rw=sys.argv[2], qd=int(sys.argv[3]), round=int(sys.argv[4]), ns=sys.argv[5],
         cmd=sys.argv[6].replace(sys.argv[7] + "/", ""), tool="leapio-perf")
print(json.dumps(d))' "$n" "$rw" "$qd" "$r" "${SPECS[$n]}" "${cmd[*]}" "$rel" <<< "$out" >> "$results"
}
for r in $(seq "$ROUNDS"); do
    for rw in randread randwrite; do
        for qd in 32 128; do
            for n in "${names[@]}"; do
                log "round $r: $n $rw QD$qd"
                run "$n" "$rw" "$qd" "$r"
            done
        done
    done
done
for n in "${names[@]}"; do stop_pid leapio "${PIDS[$n]}" || log "warning: $n did not stop cleanly"; done
pids=()

"$PY" - "$results" "$SIZE" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and '"services"' in l]
def med(svc, rw, qd, f):
    v = [f(r) for r in runs if (r["service"], r["rw"], r["qd"]) == (svc, rw, qd)]
    return statistics.median(v) if v else None
cpu = lambda r: r.get("target_cpu_us_per_io") or 0
print("4 KiB, RAM children (%s in all), one poller each; medians of %d rounds"
      % (sys.argv[2], max([r["round"] for r in runs] or [0])))
print()
print("| namespace | workload | IOPS | IOPS vs ram | p50 us | p99 us | poller CPU us/IO | CPU vs ram, us/IO |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
specs = {r["service"]: r["ns"] for r in runs}
for rw in ("randread", "randwrite"):
    for qd in (32, 128):
        base_iops = med("ram", rw, qd, lambda r: r["iops"])
        base_cpu = med("ram", rw, qd, cpu)
        for svc in ("ram", "raid0", "concat", "crypt"):
            iops = med(svc, rw, qd, lambda r: r["iops"])
            if iops is None:
                continue
            c = med(svc, rw, qd, cpu)
            rel = "" if svc == "ram" else "%.1f%%" % (100 * iops / base_iops)
            dc = "" if svc == "ram" else "%+.3f" % (c - base_cpu)
            print("| `%s` | %s QD%d | %s | %s | %.2f | %.2f | %.3f | %s |" % (
                specs[svc].replace("|", "\\|"), rw, qd, format(round(iops), ","), rel,
                med(svc, rw, qd, lambda r: r["latency"]["p50_us"]),
                med(svc, rw, qd, lambda r: r["latency"]["p99_us"]), c, dc))
EOF
