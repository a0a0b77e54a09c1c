#!/usr/bin/env bash
# Data-path benchmarks without a VM, side by side, in one go (a few minutes):
#   (a) RAM backend, 4 KiB randread, QD1 and QD128, one poller: socp against
#       leapio-perf's null controller (what socp adds: latency at QD1, IOPS
#       at QD128), plus socp with interrupts on (what a guest would see)
#   (b) file backend on a file in tmpfs and on a file on disk: socp (via
#       leapio-perf) against host fio --ioengine=io_uring on the same file,
#       4 KiB randread QD1 and QD32
#   (c) QD sweep 1..128 on the RAM backend (socp and null): IOPS and p99,
#       plotted to docs/bench-qd.png
#   (d) scripts/bench-guest.sh (socp vs QEMU nvme vs virtio-blk in a guest)
#       with a short runtime, when it exists
#   (e) scripts/bench-split.sh: the split (socp in its own process serving
#       leapio-hostd's controller over the link) and the all-in-one socp,
#       RAM 4 KiB randread QD1 and QD128 in alternating rounds; and the time
#       from kill -9 of socp to the first completion served by its
#       successor (QD1, file in tmpfs)
# Writes docs/benchmarks.md (tables, ratios, the exact commands, the
# machine) and docs/bench-qd.png.
#
# usage: bash scripts/bench.sh
#   BENCH_SECONDS=10        measured seconds per run (a, b)
#   BENCH_WARMUP=1          warm-up seconds per run
#   BENCH_SWEEP_SECONDS=3   measured seconds per QD of the sweep (c)
#   BENCH_SWEEP="1 2 4 8 16 32 64 128"
#   BENCH_RAM_SIZE=1G       RAM namespace (written once before measuring)
#   BENCH_FILE_SIZE=1G      size of the test files
#   BENCH_SHM_DIR=/dev/shm BENCH_DISK_DIR=/var/tmp   where the files go
#   BENCH_GUEST=auto|0      run scripts/bench-guest.sh if present (auto)
#   BENCH_GUEST_SECONDS=5   its fio runtime per target
#   BENCH_OUT=docs          where benchmarks.md and bench-qd.png go
#   BENCH_CPUS="0 1"        CPU of the target (socp's poller, the null
#                           controller) and CPU of the harness (leapio-perf's
#                           I/O thread, fio); "" to leave placement to the
#                           scheduler. Two spinning threads on one core wait
#                           for each other's time slices.
# Plotting uses matplotlib from a venv under $LEAPIO_CACHE (created on first
# use from PyPI), or gnuplot when that is installed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-1}
BENCH_SWEEP_SECONDS=${BENCH_SWEEP_SECONDS:-3}
BENCH_SWEEP=${BENCH_SWEEP:-1 2 4 8 16 32 64 128}
BENCH_RAM_SIZE=${BENCH_RAM_SIZE:-1G}
BENCH_FILE_SIZE=${BENCH_FILE_SIZE:-1G}
BENCH_SHM_DIR=${BENCH_SHM_DIR:-/dev/shm}
BENCH_DISK_DIR=${BENCH_DISK_DIR:-/var/tmp}
BENCH_GUEST=${BENCH_GUEST:-auto}
BENCH_GUEST_SECONDS=${BENCH_GUEST_SECONDS:-5}
BENCH_OUT=${BENCH_OUT:-$LEAPIO_REPO/docs}
if (($(nproc) >= 2)); then
    BENCH_CPUS=${BENCH_CPUS-0 1}
else
    BENCH_CPUS=${BENCH_CPUS-}
fi
pin=() fio_pin=()
if [[ -n $BENCH_CPUS ]]; then
    read -r tcpu hcpu <<< "$BENCH_CPUS"
    [[ -n ${hcpu:-} ]] || die "BENCH_CPUS needs two CPUs: target harness"
    pin=(--cpu "$hcpu" --target-cpu "$tcpu")
    fio_pin=(--cpus_allowed="$hcpu")
fi

case ${1:-} in
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
'') ;;
*) die "bench.sh takes no arguments (settings are BENCH_* variables; --help)" ;;
esac

cd "$LEAPIO_REPO"
need_cmd cargo "install Rust (rustup)"
need_cmd fio "scripts/setup-host.sh installs it"
need_cmd "$PY" "scripts/setup-host.sh installs python3"
start=$(now)

log "building socp, leapio-hostd and leapio-perf (release)"
cargo build --release --quiet -p socp --bin socp -p leapio --bin leapio -p leapio-host-driver --bin leapio-hostd \
    -p leapio-tests --bin leapio-perf
PERF=$LEAPIO_REPO/target/release/leapio-perf

work=$(mktemp -d /tmp/leapio-bench.XXXXXX)
results=$work/results.jsonl
: > "$results"
files=() spin=''
cleanup() {
    [[ -z $spin ]] || kill "$spin" 2> /dev/null || true
    stop_socp >/dev/null 2>&1 || true
    [[ -z $HOSTD_PID ]] || stop_split >/dev/null 2>&1 || true
    rm -f "${files[@]}"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$BENCH_OUT"

# note KEY VALUE...: a fact for the report (kept as JSON lines too)
note() {
    local k=$1
    shift
    "$PY" -c 'import json,sys; print(json.dumps({"note": sys.argv[1], "value": sys.argv[2]}))' "$k" "$*" >> "$results"
}

# shown: a command as the report prints it (repo-relative binaries)
shown() {
    local s="$*"
    s=${s//$LEAPIO_REPO\//}
    printf '%s' "$s"
}

# perf SCENARIO LABEL ARGS...: leapio-perf --json, its figures kept with the
# command line.
perf() {
    local scen=$1 label=$2 out
    shift 2
    local cmd=("$PERF" "$@" "${pin[@]}" -t "$T" --warmup "$BENCH_WARMUP" --json)
    log "$scen / $label: $(shown "${cmd[@]}")"
    out=$("${cmd[@]}") || die "leapio-perf failed: $(shown "${cmd[@]}")"
    if [[ $("$PY" -c 'import json,sys; print(json.load(sys.stdin)["ios"])' <<< "$out") == 0 ]]; then
        # a run that completed nothing was starved of CPU (shared machine)
        log "no I/O completed in the window: running it again"
        out=$("${cmd[@]}") || die "leapio-perf failed: $(shown "${cmd[@]}")"
    fi
    "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read())
d.update(scenario=sys.argv[1], label=sys.argv[2], cmd=sys.argv[3], tool="leapio-perf")
print(json.dumps(d))' "$scen" "$label" "$(shown "${cmd[@]}")" <<< "$out" >> "$results"
}

# fio_run SCENARIO LABEL FILE QD DIRECT: host fio, io_uring, 4 KiB randread.
fio_run() {
    local scen=$1 label=$2 file=$3 qd=$4 direct=$5 out
    local cmd=(fio --name=randread --filename="$file" --ioengine=io_uring --direct="$direct"
        --rw=randread --bs=4k --iodepth="$qd" --time_based --runtime="$T"
        --ramp_time="$BENCH_WARMUP" --norandommap --randrepeat=0 --lat_percentiles=1
        --percentile_list=50:99:99.9 "${fio_pin[@]}" --output-format=json)
    log "$scen / $label: ${cmd[*]}"
    out=$("${cmd[@]}" 2> "$work/fio.err") || { cat "$work/fio.err" >&2; die "fio failed"; }
    "$PY" -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):])
job = j["jobs"][0]
r = job["read"]
lat = r["lat_ns"]
pct = lat.get("percentile", {})
def p(k):
    for key, v in pct.items():
        if abs(float(key) - k) < 1e-6:
            return v / 1000.0
    return None
secs = job["job_runtime"] / 1000.0
cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * secs
ios = r["total_ios"]
print(json.dumps(dict(
    scenario=sys.argv[1], label=sys.argv[2], cmd=sys.argv[3], tool="fio",
    queue_depth=int(sys.argv[4]), io_size=4096, iops=r["iops"], mib_s=r["bw_bytes"] / 2**20,
    latency=dict(min_us=lat["min"] / 1000.0, mean_us=lat["mean"] / 1000.0, p50_us=p(50),
                 p99_us=p(99), p999_us=p(99.9), max_us=lat["max"] / 1000.0),
    target_cpu_s=cpu_s, target_user_s=job["usr_cpu"] / 100.0 * secs,
    target_sys_s=job["sys_cpu"] / 100.0 * secs,
    target_cpu_us_per_io=cpu_s * 1e6 / ios if ios else None,
    harness_cpu_us_per_io=None, time_s=secs)))' "$scen" "$label" "${cmd[*]}" "$qd" <<< "$out" >> "$results"
}

# socp_up NAME CTRL-SPEC: start socp (one poller) serving one controller at
# $work/NAME.sock; sets SOCK and prints socp's command line into the report.
socp_up() { # name spec [extra socp args...]
    local name=$1 spec=$2
    shift 2
    SOCK=$work/$name.sock
    local args=(--pollers 1 "$@" --ctrl "sock=$SOCK,$spec")
    start_leapio "$work/socp-$name.log" "${args[@]}" || die "leapio did not start"
    note "socp:$name" "$(shown "$LEAPIO_BIN" "${args[@]}")"
    local ns
    ns=$(grep -o 'namespace 1: .*' "$work/socp-$name.log" | head -1 | sed 's/\x1b\[[0-9;]*m//g' || true)
    [[ -n $ns ]] && note "socp-ns:$name" "$ns"
}

socp_down() {
    stop_socp || log "warning: socp did not stop cleanly (see $SOCP_LOG)"
}

note machine "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); kernel $(uname -r); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2 / 1048576}' /proc/meminfo)"
note load "$(cut -d' ' -f1-3 /proc/loadavg)"
note git "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
if [[ -n $BENCH_CPUS ]]; then
    note pinning "target (socp poller / null controller) on CPU $tcpu, harness (leapio-perf I/O thread / fio) on CPU $hcpu"
else
    note pinning "no CPU pinning (BENCH_CPUS empty)"
fi
note settings "BENCH_SECONDS=$BENCH_SECONDS BENCH_WARMUP=$BENCH_WARMUP BENCH_SWEEP_SECONDS=$BENCH_SWEEP_SECONDS BENCH_RAM_SIZE=$BENCH_RAM_SIZE BENCH_FILE_SIZE=$BENCH_FILE_SIZE"

# ---- (a) RAM: socp vs null ------------------------------------------------
T=$BENCH_SECONDS
socp_up ram "ns=ram:$BENCH_RAM_SIZE"
log "writing the RAM namespace once (untouched pages would cost a page fault on first read)"
"$PERF" --sock "$SOCK" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
    || die "prefilling the RAM namespace failed"
note "prefill:ram" "$(shown "$PERF") --sock $SOCK -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0"
pid=$SOCP_PID
for qd in 1 128; do
    perf ram "socp QD$qd" --sock "$SOCK" --socp-pid "$pid" -q "$qd" -o 4k -w randread
    perf ram "null QD$qd" --null -q "$qd" -o 4k -w randread --range "$BENCH_RAM_SIZE"
done
perf ram "socp QD1, interrupts on" --sock "$SOCK" --socp-pid "$pid" -q 1 -o 4k -w randread --irq
# The copy a RAM disk cannot avoid: a controller that only moves the data
# (--null-copy) is the ceiling on this machine. Over the whole namespace the
# 4 KiB copies come from DRAM; over 8 MiB they stay in the caches.
perf ram "null-copy QD128" --null-copy -q 128 -o 4k -w randread --range "$BENCH_RAM_SIZE"
perf ram "socp QD128, 8 MiB range" --sock "$SOCK" --socp-pid "$pid" -q 128 -o 4k -w randread --range 8M
perf ram "null-copy QD128, 8 MiB range" --null-copy -q 128 -o 4k -w randread --range 8M
if ((${#pin[@]})); then
    saved=("${pin[@]}")
    pin=()
    # no affinity set: the poller runs where it last ran (pinned above), the
    # harness wherever the scheduler puts it
    taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" > /dev/null
    perf ram "socp QD1, not pinned" --sock "$SOCK" --socp-pid "$pid" -q 1 -o 4k -w randread
    pin=("${saved[@]}")
fi

# ---- (e) the split ------------------------------------------------------------
# The all-in-one socp and the split side by side in alternating rounds, and
# kill -9 to first completion (scripts/bench-split.sh).
socp_down
note "split-cmd" "BENCH_SPLIT_SECONDS=${BENCH_SPLIT_SECONDS:-5} BENCH_SPLIT_ROUNDS=${BENCH_SPLIT_ROUNDS:-3} bash scripts/bench-split.sh"
BENCH_RAM_SIZE=$BENCH_RAM_SIZE bash scripts/bench-split.sh --results "$results" > "$work/split.out" \
    || die "scripts/bench-split.sh failed"
socp_up ram "ns=ram:$BENCH_RAM_SIZE"
"$PERF" --sock "$SOCK" -w write -o 128k -q 16 --prefill -t 0.1 --warmup 0 > /dev/null \
    || die "prefilling the RAM namespace failed"
pid=$SOCP_PID

# ---- (c) QD sweep, RAM -----------------------------------------------------
T=$BENCH_SWEEP_SECONDS
for qd in $BENCH_SWEEP; do
    perf sweep "socp QD$qd" --sock "$SOCK" --socp-pid "$pid" -q "$qd" -o 4k -w randread
    perf sweep "null QD$qd" --null -q "$qd" -o 4k -w randread --range "$BENCH_RAM_SIZE"
done
socp_down

# ---- (b) file backend: socp vs fio -----------------------------------------
T=$BENCH_SECONDS
for place in tmpfs disk; do
    if [[ $place == tmpfs ]]; then dir=$BENCH_SHM_DIR; else dir=$BENCH_DISK_DIR; fi
    f=$dir/leapio-bench-$$.img
    files+=("$f")
    log "$place: writing $BENCH_FILE_SIZE to $f"
    mib=$(( $(numfmt --from=iec "$BENCH_FILE_SIZE") >> 20 ))
    dd if=/dev/urandom of="$f" bs=1M count="$mib" conv=fsync status=none
    direct=1
    if ! dd if="$f" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; then
        direct=0
        note "direct:$place" "O_DIRECT refused on $dir ($(findmnt -no FSTYPE -T "$dir" 2>/dev/null || stat -f -c %T "$dir")): fio runs with --direct=0 and socp falls back to buffered I/O"
    else
        note "direct:$place" "O_DIRECT works on $dir ($(findmnt -no FSTYPE -T "$dir" 2>/dev/null || stat -f -c %T "$dir")): fio --direct=1; socp opens the file O_DIRECT"
    fi
    socp_up "$place" "ns=file:$f"
    for qd in 1 32; do
        perf "file-$place" "socp QD$qd" --sock "$SOCK" --socp-pid "$SOCP_PID" -q "$qd" -o 4k -w randread
        # A guest's driver, like fio, sleeps until the completion interrupt:
        # the harness does the same (--irq-wait) while socp's poller spins.
        perf "file-$place" "socp QD$qd, harness on interrupts" --sock "$SOCK" --socp-pid "$SOCP_PID" -q "$qd" -o 4k -w randread --irq-wait
        fio_run "file-$place" "fio QD$qd" "$f" "$qd" "$direct"
    done
    socp_down
    # fio again while a plain busy loop holds the target CPU, as socp's
    # spinning poller does: what a busy second vCPU costs on this machine.
    if [[ -n $BENCH_CPUS ]]; then
        taskset -c "$tcpu" sh -c 'while :; do :; done' &
        spin=$!
        fio_run "file-$place" "fio QD32, CPU $tcpu busy" "$f" 32 "$direct"
        kill "$spin"
        wait "$spin" 2> /dev/null || true
        spin=''
    fi
    # Nobody spinning, as fio: socp's poller also sleeps in io_uring while
    # only backend I/O is pending (--io-wait-us). On 2 cores, two spinning
    # threads take the CPU the kernel needs to complete the I/O, and the
    # hypervisor steals time from a VM whose vCPUs never idle.
    socp_up "$place-sleep" "ns=file:$f" --io-wait-us 100
    for qd in 1 32; do
        perf "file-$place" "socp QD$qd, nobody spins" --sock "$SOCK" --socp-pid "$SOCP_PID" -q "$qd" -o 4k -w randread --irq-wait
    done
    socp_down
    rm -f "$f"
done

# ---- (d) in-guest comparison -------------------------------------------------
if [[ $BENCH_GUEST == 0 ]]; then
    note guest "skipped (BENCH_GUEST=0)"
elif [[ ! -f scripts/bench-guest.sh ]]; then
    note guest "skipped: scripts/bench-guest.sh does not exist yet"
elif [[ $(id -u) -ne 0 ]]; then
    note guest "skipped: scripts/bench-guest.sh needs root"
else
    # 2 vCPUs share the 2 host cores with socp's poller; 1 vCPU leaves the
    # poller (or QEMU's device emulation) a core of its own.
    for smp in 2 1; do
        gcmd=(bash scripts/bench-guest.sh --runtime "$BENCH_GUEST_SECONDS" --smp "$smp" --json)
        log "guest: ${gcmd[*]}"
        if "${gcmd[@]}" > "$work/guest.out" 2> "$work/guest.err"; then
            note "guest-cmd-$smp" "${gcmd[*]}"
            note "guest-table-$smp" "$(sed '$d' "$work/guest.out")"
            note "guest-json-$smp" "$(tail -n 1 "$work/guest.out")"
        else
            note "guest-$smp" "failed: \`${gcmd[*]}\`: $(grep -E 'IOPS|error' "$work/guest.err" | tail -n 5 | sed 's/^/  /' || true)"
        fi
    done
fi

note duration "$(elapsed "$start") s"

# ---- the report ------------------------------------------------------------
log "writing $BENCH_OUT/benchmarks.md"
cp "$results" "$BENCH_OUT/bench-results.jsonl"
"$PY" - "$results" "$BENCH_OUT" <<'EOF'
import json, os, sys

results, out = sys.argv[1], sys.argv[2]
runs, notes = [], {}
for line in open(results):
    d = json.loads(line)
    if "note" in d:
        notes[d["note"]] = d["value"]
    else:
        runs.append(d)

def get(scen, label):
    for r in runs:
        if r["scenario"] == scen and r["label"] == label:
            return r
    return None

def f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)

def table(rows):
    head = ("| run | IOPS | MiB/s | lat min | p50 | p99 | p99.9 | max (us) "
            "| target CPU us/IO | harness CPU us/IO |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if r is None:
            continue
        l = r["latency"]
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["label"], f(r["iops"], "{:,.0f}"), f(r["mib_s"], "{:.1f}"), f(l["min_us"]),
            f(l["p50_us"]), f(l["p99_us"]), f(l["p999_us"]), f(l["max_us"], "{:.0f}"),
            f(r.get("target_cpu_us_per_io"), "{:.3f}"),
            f(r.get("harness_cpu_us_per_io"), "{:.3f}")))
    return "\n".join(lines)

def commands(rows, extra=()):
    cmds = list(extra) + [r["cmd"] for r in rows if r]
    return "\n".join(["```"] + cmds + ["```"])

def ratio(a, b):
    return None if not a or not b else a / b

def lat(r, k):
    return (r.get("latency") or {}).get(k) if r else None

def delta(a, b, k):
    x, y = lat(a, k), lat(b, k)
    return None if x is None or y is None else x - y

md = ["# Benchmarks", "",
      "Generated by `scripts/bench.sh` (do not edit: run it again). Host-side "
      "benchmarks with no VM: `leapio-perf` (tests/src/bin/leapio-perf.rs) plays "
      "the guest and the hypervisor over vfio-user, polls its completion queues "
      "(no interrupts unless said) and measures latency from SQE write to CQE "
      "seen. *target CPU* is the on-CPU time of socp's `socp-poller-*` threads "
      "and of the io_uring workers (`iou-wrk-*`) the kernel runs for them "
      "(from /proc/PID/task/*/schedstat; for fio, fio's own usr+sys, which "
      "leaves out its io_uring workers), *harness "
      "CPU* that of leapio-perf's I/O thread, both per I/O. Pollers busy-poll: "
      "their CPU per I/O falls as the load rises.", "",
      "## Machine", "",
      "- " + notes.get("machine", "?"),
      "- load average at start: " + notes.get("load", "?") +
      " (shared machine: figures are noisy; compare rows of one run with each other)",
      "- " + notes.get("pinning", ""),
      "- commit " + notes.get("git", "?"),
      "- " + notes.get("settings", ""),
      "- total bench time " + notes.get("duration", "?"), ""]

# (a)
a_rows = [get("ram", l) for l in ("socp QD1", "null QD1", "socp QD1, interrupts on",
                                   "socp QD1, not pinned", "socp QD128", "null QD128",
                                   "null-copy QD128", "socp QD128, 8 MiB range",
                                   "null-copy QD128, 8 MiB range")]
md += ["## (a) RAM backend, 4 KiB randread, one poller: socp vs the null controller", "",
       "The null controller is a thread of leapio-perf that reads each SQE and posts "
       "its CQE at once over the same shared-memory rings: the harness and the "
       "cross-core cache-line traffic, i.e. the floor. *null-copy* also copies "
       "each I/O's data to or from a private RAM area of the same size (what any RAM "
       "disk must do) and nothing else: the ceiling for a RAM backend on this machine. "
       "socp's RAM namespace was written once before measuring.", "", table(a_rows), ""]
s1, n1, s128, n128 = (get("ram", l) for l in ("socp QD1", "null QD1", "socp QD128", "null QD128"))
si = get("ram", "socp QD1, interrupts on")
if s1 and n1:
    md.append("- socp adds at QD1: p50 **{} us**, p99 **{} us** over null "
              "(socp {}/{} us, null {}/{} us)".format(
                  f(delta(s1, n1, "p50_us"), "{:+.2f}"), f(delta(s1, n1, "p99_us"), "{:+.2f}"),
                  f(lat(s1, "p50_us")), f(lat(s1, "p99_us")),
                  f(lat(n1, "p50_us")), f(lat(n1, "p99_us"))))
if s1 and si:
    md.append("- interrupts on (an eventfd write per completion batch) at QD1: "
              "p50 {} us, poller {} us/IO".format(
                  f(delta(si, s1, "p50_us"), "{:+.2f}"),
                  f((si.get("target_cpu_us_per_io") or 0) - (s1.get("target_cpu_us_per_io") or 0), "{:+.3f}")))
su = get("ram", "socp QD1, not pinned")
if s1 and su:
    md.append("- the same QD1 run with no CPU affinity: {} IOPS, p50 {} us, "
              "p99 {} us (pinned: {} IOPS)".format(
                  f(su["iops"], "{:,.0f}"), f(lat(su, "p50_us")), f(lat(su, "p99_us")),
                  f(s1["iops"], "{:,.0f}")))
if s128 and n128:
    md.append("- IOPS at QD128: socp {} = **{}** of null's {}".format(
        f(s128["iops"], "{:,.0f}"), f(ratio(s128["iops"], n128["iops"]), "{:.1%}"),
        f(n128["iops"], "{:,.0f}")))
for sl, cl in (("socp QD128", "null-copy QD128"),
               ("socp QD128, 8 MiB range", "null-copy QD128, 8 MiB range")):
    s, c = get("ram", sl), get("ram", cl)
    if s and c:
        md.append("- {}: {} IOPS = **{}** of the copy-only ceiling {} ({} vs {} us of CPU per I/O)".format(
            sl, f(s["iops"], "{:,.0f}"), f(ratio(s["iops"], c["iops"]), "{:.1%}"),
            f(c["iops"], "{:,.0f}"), f(s.get("target_cpu_us_per_io"), "{:.3f}"),
            f(c.get("target_cpu_us_per_io"), "{:.3f}")))
md += ["", "Commands:", "", commands(a_rows, [notes.get("socp:ram", ""), notes.get("prefill:ram", "")]), ""]

# (b)
md += ["## (b) File backend, 4 KiB randread: socp vs host fio (io_uring) on the same file", ""]
for place in ("tmpfs", "disk"):
    variants = ("", ", harness on interrupts", ", nobody spins")
    rows = [get("file-" + place, l) for qd in (1, 32)
            for l in ["socp QD%d%s" % (qd, v) for v in variants] + ["fio QD%d" % qd]]
    busy = [r for r in runs if r["scenario"] == "file-" + place and r["label"].startswith("fio QD32, CPU ")]
    rows += busy
    md += ["### " + ("file in tmpfs" if place == "tmpfs" else "file on disk"), "",
           "- " + notes.get("direct:" + place, ""),
           "- socp: " + notes.get("socp-ns:" + place, "?"), "", table(rows), ""]
    for qd, variant in ((qd, v) for qd in (1, 32) for v in variants):
        s, fi = get("file-" + place, "socp QD%d%s" % (qd, variant)), get("file-" + place, "fio QD%d" % qd)
        if s and fi:
            md.append("- QD{}{}: socp/fio IOPS **{}**, p50 {} us, p99 {} us, "
                      "CPU/IO socp poller {} us vs fio {} us".format(
                          qd, variant, f(ratio(s["iops"], fi["iops"]), "{:.1%}"),
                          f(delta(s, fi, "p50_us"), "{:+.2f}"),
                          f(delta(s, fi, "p99_us"), "{:+.2f}"),
                          f(s.get("target_cpu_us_per_io"), "{:.3f}"),
                          f(fi.get("target_cpu_us_per_io"), "{:.3f}")))
    for b in busy:
        s = get("file-" + place, "socp QD32, harness on interrupts")
        fi = get("file-" + place, "fio QD32")
        if s and fi:
            md.append("- {}: {} IOPS = {} of fio on an idle machine; socp QD32 with the harness "
                      "on interrupts = **{}** of it".format(
                          b["label"], f(b["iops"], "{:,.0f}"), f(ratio(b["iops"], fi["iops"]), "{:.1%}"),
                          f(ratio(s["iops"], b["iops"]), "{:.1%}")))
    md += ["", "Commands:", "", commands(rows, [notes.get("socp:" + place, ""), notes.get("socp:" + place + "-sleep", "")]), ""]

# (c)
sweep = [r for r in runs if r["scenario"] == "sweep"]
qds = sorted({r["queue_depth"] for r in sweep})
md += ["## (c) Queue-depth sweep, RAM backend, 4 KiB randread, one poller", "",
       "![IOPS and p99 latency against queue depth](bench-qd.png)", "",
       "| QD | socp IOPS | socp p99 us | null IOPS | null p99 us | socp/null IOPS | socp poller us/IO |",
       "|---|---|---|---|---|---|---|"]
for q in qds:
    s, n = get("sweep", "socp QD%d" % q), get("sweep", "null QD%d" % q)
    if not s or not n:
        continue
    md.append("| {} | {} | {} | {} | {} | {} | {} |".format(
        q, f(s["iops"], "{:,.0f}"), f(s["latency"]["p99_us"]), f(n["iops"], "{:,.0f}"),
        f(n["latency"]["p99_us"]), f(ratio(s["iops"], n["iops"]), "{:.1%}"),
        f(s.get("target_cpu_us_per_io"), "{:.3f}")))
md += ["", "Commands (QD varies):", "",
       commands([get("sweep", "socp QD%d" % qds[0]), get("sweep", "null QD%d" % qds[0])] if qds else []), ""]

# (e)
import statistics
ab = [r for r in runs if r["scenario"] == "split-ab"]
def med(label, f):
    v = [f(r) for r in ab if r["label"] == label]
    return statistics.median(v) if v else None
labels = sorted({r["label"] for r in ab}, key=lambda l: (int(l.split("QD")[1]), l))
md += ["## (e) The split: socp in its own process, linked to leapio-hostd", "",
       "The all-in-one socp and the split (leapio-hostd, and socp --link in another process: "
       "guest memory, doorbell page and queue-state area passed over a Unix socket) serve "
       "the same RAM namespace size at the same time; leapio-perf measures them in "
       "alternating rounds (`" + notes.get("split-cmd", "") + "`). Both record every command "
       "in the queue-state area. Medians over the rounds:", "",
       "| run | IOPS | p50 us | p99 us | poller CPU us/IO | rounds |", "|---|---|---|---|---|---|"]
for l in labels:
    md.append("| {} | {} | {} | {} | {} | {} |".format(
        l, f(med(l, lambda r: r["iops"]), "{:,.0f}"), f(med(l, lambda r: r["latency"]["p50_us"])),
        f(med(l, lambda r: r["latency"]["p99_us"])),
        f(med(l, lambda r: r.get("target_cpu_us_per_io") or 0), "{:.3f}"),
        sum(1 for r in ab if r["label"] == l)))
md.append("")
for qd in (1, 128):
    a, s_ = "all-in-one QD%d" % qd, "split QD%d" % qd
    if med(a, lambda r: 1) and med(s_, lambda r: 1):
        md.append("- split vs all-in-one at QD{}: p50 **{} us**, IOPS **{}**".format(
            qd, f(med(s_, lambda r: r["latency"]["p50_us"]) - med(a, lambda r: r["latency"]["p50_us"]), "{:+.2f}"),
            f(med(s_, lambda r: r["iops"]) / med(a, lambda r: r["iops"]), "{:.1%}")))
rs = [r for r in runs if r["scenario"] == "restart"]
if rs:
    md += ["", "Restart: a QD1 randread run against a file in tmpfs; 2 s in, the split's socp is "
           "killed with SIGKILL and a new one started (as a supervisor would). The command "
           "that waits for the new runtime has the run's maximum latency: the time from the "
           "kill to the first completion the successor serves, start-up of the new process "
           "included.", "",
           "| run | IOPS over the run | p50 us | max latency (kill to first completion) |",
           "|---|---|---|---|"]
    for r in rs:
        md.append("| {} | {} | {} | **{} ms** |".format(
            r["label"], f(r["iops"], "{:,.0f}"), f(lat(r, "p50_us")),
            f((lat(r, "max_us") or 0) / 1000.0, "{:.1f}")))
md += ["", "Commands (one of each):", "",
       commands([next((r for r in ab if r["label"] == l), None) for l in labels] + rs[:1]), ""]

# (d)
md += ["## (d) In a guest: socp vs QEMU nvme vs virtio-blk", ""]
for smp in ("2", "1"):
    md += ["### %s vCPU%s" % (smp, "s" if smp != "1" else ""), ""]
    if "guest-table-" + smp in notes:
        md += ["`" + notes.get("guest-cmd-" + smp, "") + "`", "", "```", notes["guest-table-" + smp], "```", ""]
    else:
        md += [notes.get("guest-" + smp, notes.get("guest", "not run")), ""]

md += ["Raw figures of every run, with their commands: `bench-results.jsonl`.", ""]
open(os.path.join(out, "benchmarks.md"), "w").write("\n".join(md))

# data for the plot
with open(os.path.join(out, ".bench-qd.dat"), "w") as fh:
    for q in qds:
        s, n = get("sweep", "socp QD%d" % q), get("sweep", "null QD%d" % q)
        if s and n:
            fh.write("%d %f %f %f %f\n" % (q, s["iops"], s["latency"]["p99_us"],
                                           n["iops"], n["latency"]["p99_us"]))
EOF

# ---- the plot ----------------------------------------------------------------
dat=$BENCH_OUT/.bench-qd.dat
png=$BENCH_OUT/bench-qd.png
venv=$LEAPIO_CACHE/bench-venv
plotted=0
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into $venv"
    mkdir -p "$LEAPIO_CACHE"
    { "$PY" -m venv "$venv" && "$venv/bin/pip" install --quiet matplotlib; } \
        || log "warning: could not install matplotlib"
fi
if "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/python" - "$dat" "$png" <<'EOF' && plotted=1
import sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
qd = [r[0] for r in rows]
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
a.plot(qd, [r[1] / 1e3 for r in rows], "o-", label="socp (RAM, 1 poller)")
a.plot(qd, [r[3] / 1e3 for r in rows], "s--", label="null controller")
a.set_xscale("log", base=2); a.set_xlabel("queue depth"); a.set_ylabel("kIOPS")
a.set_title("4 KiB randread, IOPS"); a.grid(True, alpha=0.3); a.legend()
b.plot(qd, [r[2] for r in rows], "o-", label="socp (RAM, 1 poller)")
b.plot(qd, [r[4] for r in rows], "s--", label="null controller")
b.set_xscale("log", base=2); b.set_yscale("log"); b.set_xlabel("queue depth")
b.set_ylabel("p99 latency (us)"); b.set_title("4 KiB randread, p99 latency")
b.grid(True, alpha=0.3, which="both"); b.legend()
fig.suptitle("leapio-perf QD sweep (scripts/bench.sh)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
EOF
fi
if ((!plotted)) && command -v gnuplot >/dev/null 2>&1; then
    gnuplot <<EOF && plotted=1
set terminal pngcairo size 1100,420
set output '$png'
set multiplot layout 1,2 title 'leapio-perf QD sweep (scripts/bench.sh)'
set logscale x 2; set xlabel 'queue depth'; set grid
set ylabel 'kIOPS'; set title '4 KiB randread, IOPS'
plot '$dat' using 1:(\$2/1000) with linespoints title 'socp (RAM, 1 poller)', '' using 1:(\$4/1000) with linespoints title 'null controller'
set logscale y; set ylabel 'p99 latency (us)'; set title '4 KiB randread, p99 latency'
plot '$dat' using 1:3 with linespoints title 'socp (RAM, 1 poller)', '' using 1:5 with linespoints title 'null controller'
unset multiplot
EOF
fi
rm -f "$dat"
((plotted)) || log "warning: no plot (neither matplotlib nor gnuplot available); $png not written"

log "done in $(elapsed "$start") s: $BENCH_OUT/benchmarks.md"
sed -n '/^## (a)/,/^Commands/p' "$BENCH_OUT/benchmarks.md" | sed '$d'
