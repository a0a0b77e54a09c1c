#!/usr/bin/env bash
# What the storage services cost, side by side: all-in-one leapio
# processes (one poller each) serving one namespace each, made of RAM
# children: a plain `ram:` namespace, `raid0:(ram|ram)`, `concat:(ram|ram)`,
# `raid1:(ram|ram)` and `crypt:(ram)?key=...` (a 64-byte key: XTS-AES-256).
# 4 KiB randread and randwrite at QD32 and QD128 with leapio-perf, in
# alternating rounds so that the machine's drift hits all alike; medians.
# Poller CPU per I/O is bench-split's: the on-CPU time of the pollers (and
# their io_uring workers) over the I/Os done.
# Then the mirror's resync rate (child 1 failed, the whole namespace
# written, child 1 re-added with no limit: bytes over time), and multipath
# over NVMe/TCP: one socp target with three listeners of one subsystem
# (a file in /dev/shm), driven by leapio-perf --backend (its thread is the
# host) through one path, through `multipath:(path|path)` where the second
# path is ANA non-optimized (all I/O down the first: what the multipath
# layer costs), and through two optimized paths (round robin): the host
# thread's CPU per I/O, side by side.
#
# usage: bash scripts/bench-services.sh [--results FILE]
#   --results FILE   append each run as a JSON line (bench.sh's format)
#   BENCH_SVC_SECONDS=5 BENCH_SVC_ROUNDS=3 BENCH_RAM_SIZE=1G (the whole
#   namespace: each of two children holds half)
#   BENCH_CPUS="0 1"  target CPU and harness CPU (as bench.sh)
#   BENCH_SVC_TCP=0   skip the multipath part
# Builds leapio, socp, leapioctl and leapio-perf (release) into
# $CARGO_TARGET_DIR (default target/ of the repository) and runs them
# from there.
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
log "building leapio, socp, leapioctl and leapio-perf (release, in $rel)"
cargo build --release --quiet -p leapio --bin leapio -p socp --bin socp -p leapioctl \
    -p leapio-tests --bin leapio-perf
AIO=$rel/leapio PERF=$rel/leapio-perf CTL=$rel/leapioctl TGT=$rel/socp
work=$(mktemp -d /tmp/leapio-bench-services.XXXXXX)
[[ -n $results ]] || results=$work/results.jsonl
head -c 64 /dev/urandom > "$work/key"
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work" "${shm:-}"
}
trap cleanup EXIT

# serve NAME SPEC: an all-in-one leapio with one poller serving SPEC (its
# control socket $work/NAME.ctl)
declare -A SOCKS PIDS SPECS
serve() {
    local name=$1 sock=$work/$1.sock
    NO_COLOR=1 "$AIO" --pollers 1 --control "$work/$name.ctl" --ctrl "sock=$sock,ns=$2" 2> "$work/$name.log" &
    PIDS[$name]=$!
    pids+=($!)
    wait_for_socket "$sock" 30 "$!" || die "$name: leapio did not start (see $work/$name.log: $(tail -1 "$work/$name.log"))"
    local spec=${2//$work\/key/KEYFILE}
    SOCKS[$name]=$sock SPECS[$name]=${spec//$work\//}
}
# mirror NAME [ACTION ARG...]: leapioctl service on mirror NAME
mirror() { local n=$1; shift; "$CTL" -s "$work/$n.ctl" service "$n" 1 "$@"; }
# resync_field EXPR: EXPR over d, the state of mirror raid1
resync_field() { mirror raid1 | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
secs() { date +%s.%N; }
# jline KEY=VALUE...: one JSON line (numbers as numbers) to the results
jline() {
    "$PY" -c '
import json, sys
d = {}
for a in sys.argv[1:]:
    k, v = a.split("=", 1)
    try:
        d[k] = float(v) if "." in v or "e" in v else int(v)
    except ValueError:
        d[k] = v
print(json.dumps(d))' "$@" >> "$results"
}
# in_sync NAME: wait (60 s) until every child of mirror NAME is in sync
synced() { mirror "$1" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if all(c["state"] == "in-sync" for c in d["children"]) else 1)'; }
in_sync() { wait_until 60 '' synced "$1" || die "mirror $1 did not get in sync"; }
names=(ram raid0 concat raid1 crypt)
serve ram "ram:$SIZE"
serve raid0 "raid0:(ram:$HALF|ram:$HALF)"
serve concat "concat:(ram:$HALF|ram:$HALF)"
# (no limit on the new mirror's first copy)
serve raid1 "raid1:(ram:$SIZE|ram:$SIZE)?bitmap=$work/r1.bitmap&resync-mbps=100000"
serve crypt "crypt:(ram:$SIZE)?key=$work/key"
in_sync raid1
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

# The mirror's resync: child 1 out while the whole namespace is written,
# then back, with no limit (what the copy itself does), and with the
# default limit of 100 MB/s (that it holds).
resync_run() { # LIMIT
    local limit=$1 t0 t1 b0 b1 rate
    mirror raid1 fail 1 > /dev/null
    "$PERF" --sock "${SOCKS[raid1]}" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
        || die "writing raid1 failed"
    mirror raid1 rate "$limit" > /dev/null
    b0=$(resync_field 'd["resync"]["bytes"]')
    t0=$(secs)
    mirror raid1 readd 1 > /dev/null
    if ((limit < 100000)); then
        sleep 3
        rate=$(resync_field 'd["resync"]["rate_bytes_per_s"]')
        mirror raid1 rate 100000 > /dev/null
    fi
    in_sync raid1
    t1=$(secs)
    b1=$(resync_field 'd["resync"]["bytes"]')
    jline scenario=resync limit_mbps="$limit" bytes=$((b1 - b0)) secs="$("$PY" -c "print($t1 - $t0)")" \
        rate_at_3s="${rate:-0}" ns="${SPECS[raid1]}"
}
log "resync: raid1, child 1 failed, $SIZE written, re-added (no limit)"
resync_run 100000
log "resync: the same at the default limit (100 MB/s), sampled after 3 s"
resync_run 100
for n in "${names[@]}"; do stop_pid leapio "${PIDS[$n]}" || log "warning: $n did not stop cleanly"; done
pids=()

# Multipath over NVMe/TCP: leapio-perf's thread is the host, through one
# path or through multipath over two listeners of one subsystem.
if [[ ${BENCH_SVC_TCP:-1} != 0 ]]; then
    shm=$(mktemp /dev/shm/leapio-bench-mp.XXXXXX)
    truncate -s "$SIZE" "$shm"
    nqn=nqn.2026-12.io.leapio:bench-mp p1=${BENCH_MP_PORT:-4451}
    p2=$((p1 + 1))
    tset=()
    [[ -n ${tcpu:-} ]] && tset=(taskset -c "$tcpu")
    # listener 3 (the same subsystem) reports non-optimized: a multipath
    # over 1 and 3 sends everything down 1
    p3=$((p1 + 2))
    NO_COLOR=1 "${tset[@]}" "$TGT" --pollers 1 \
        --tcp-target "listen=127.0.0.1:$p1,nqn=$nqn,ns=file:$shm,ana=optimized" \
        --tcp-target "listen=127.0.0.1:$p2,nqn=$nqn,ns=file:$shm,ana=optimized" \
        --tcp-target "listen=127.0.0.1:$p3,nqn=$nqn,ns=file:$shm,ana=non-optimized" 2> "$work/tgt.log" &
    tpid=$!
    pids+=("$tpid")
    i=0
    until (($(grep -c 'NVMe/TCP target listening' "$work/tgt.log") >= 3)); do
        ((i < 300)) && kill -0 "$tpid" 2>/dev/null || die "the NVMe/TCP target did not listen (see $work/tgt.log)"
        sleep 0.1
        i=$((i + 1))
    done
    declare -A TCP=(
        [one]="nvme-tcp:127.0.0.1:$p1/$nqn"
        [multipath]="multipath:(nvme-tcp:127.0.0.1:$p1/$nqn|nvme-tcp:127.0.0.1:$p2/$nqn)"
        [mp-ana]="multipath:(nvme-tcp:127.0.0.1:$p1/$nqn|nvme-tcp:127.0.0.1:$p3/$nqn)"
    )
    hpin=()
    [[ -n ${hcpu:-} ]] && hpin=(--cpu "$hcpu")
    "$PERF" --backend "${TCP[one]}" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
        || die "prefilling the target failed"
    for r in $(seq "$ROUNDS"); do
        for rw in randread randwrite; do
            for n in one mp-ana multipath; do
                log "round $r: NVMe/TCP $n $rw QD32"
                out=$("$PERF" --backend "${TCP[$n]}" --remote-pid "$tpid" -q 32 -o 4k -w "$rw" \
                    "${hpin[@]}" -t "$T" --warmup 1 --json) || die "leapio-perf failed on ${TCP[$n]}"
                "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update(scenario="tcp-paths", service=sys.argv[1], rw=sys.argv[2], qd=32, round=int(sys.argv[3]),
         ns=sys.argv[4].replace(sys.argv[5], "NQN"), tool="leapio-perf --backend")
print(json.dumps(d))' "$n" "$rw" "$r" "${TCP[$n]}" "$nqn" <<< "$out" >> "$results"
            done
        done
    done
    stop_pid socp "$tpid" || log "warning: the target did not stop cleanly"
    pids=()
fi

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
        for svc in ("ram", "raid0", "concat", "raid1", "crypt"):
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
rs = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and '"resync"' in l]
if rs:
    print()
    print("Resync of `%s` (RAM children, 1 MiB regions): child 1 failed, the whole"
          " namespace written, child 1 re-added" % rs[0]["ns"].replace("|", "\\|"))
    print()
    print("| limit MB/s | copied MiB | seconds | MB/s | rate the mirror reported at 3 s, MB/s |")
    print("|---:|---:|---:|---:|---:|")
    for r in rs:
        print("| %s | %d | %.2f | %.0f | %s |" % (
            "none" if r["limit_mbps"] >= 100000 else r["limit_mbps"], r["bytes"] >> 20, r["secs"],
            r["bytes"] / r["secs"] / 1e6, "%.0f" % (r["rate_at_3s"] / 1e6) if r["rate_at_3s"] else ""))
tcp = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and '"tcp-paths"' in l]
if tcp:
    def tmed(svc, rw, f):
        v = [f(r) for r in tcp if (r["service"], r["rw"]) == (svc, rw)]
        return statistics.median(v) if v else None
    hcpu = lambda r: r.get("harness_cpu_us_per_io") or 0
    rcpu = lambda r: r.get("remote_cpu_us_per_io") or 0
    print()
    print("NVMe/TCP on loopback, 4 KiB QD32, leapio-perf's thread as the host; medians of %d rounds"
          % max(r["round"] for r in tcp))
    print()
    print("| host backend | workload | IOPS | p50 us | host CPU us/IO | vs one path | target CPU us/IO |")
    print("|---|---|---:|---:|---:|---:|---:|")
    nss = {r["service"]: r["ns"] for r in tcp}
    for rw in ("randread", "randwrite"):
        base = tmed("one", rw, hcpu)
        for svc in ("one", "mp-ana", "multipath"):
            iops = tmed(svc, rw, lambda r: r["iops"])
            if iops is None:
                continue
            c = tmed(svc, rw, hcpu)
            print("| `%s` | %s | %s | %.2f | %.3f | %s | %.3f |" % (
                nss[svc].replace("|", "\\|"), rw, format(round(iops), ","),
                tmed(svc, rw, lambda r: r["latency"]["p50_us"]), c,
                "" if svc == "one" else "%+.3f" % (c - base), tmed(svc, rw, rcpu)))
EOF
