#!/usr/bin/env bash
# Who moves the guest's data on the SoC, measured side by side in one SoC
# VM (aarch64, TCG) with an IOMMU and two SSDs of the same kind:
#   nsid 1  the first SSD, driven by socp from user space through VFIO
#           (nvme-pci:): the guest's memory is in the SSD's IOMMU domain
#   nsid 2  the second SSD, through the SoC's kernel (file:/dev/nvmeXn1):
#           buffered, as O_DIRECT cannot pin guest memory seen through a BAR
#           (the page cache is emptied before each of its runs, and the SSDs
#           are as large as the SoC's RAM, so that its reads reach the SSD)
# leapio-perf on the host plays the guest, on one connection (--more), and
# before and after each run the script reads socp's status in the SoC:
# bytes of data socp's CPU copied, and its pollers' busy time (loops that
# did work; socp --poller-stats), per I/O; also socp's whole CPU time per
# I/O (its pollers spin while commands are in flight, so that one is about
# 1/IOPS). Workloads: 4 KiB random read QD32, 128 KiB sequential read QD8;
# the two paths alternate, round after round; medians.
#
# Under TCG the emulator, not the SoC's CPU, sets the pace: IOPS and times
# are indicative only; the copied bytes are exact. (The first SSD writes
# into the link function's RAM BAR, which QEMU's DMA cannot map directly:
# it bounces every transfer through one buffer of its own, which a real
# device's peer-to-peer DMA would not.)
#
# usage: bash scripts/bench-soc-dma.sh [--seconds N] [--rounds N] [--out FILE]
#   --seconds N  measured seconds per run (default 8)
#   --rounds N   rounds (default 2)
#   --out FILE   the report (default docs/benchmarks-soc-dma.md)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

secs=8 rounds=2 out=''
while (($#)); do
    case $1 in
    --seconds) secs=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-soc-dma.sh: unknown option $1 (--help)" ;;
    esac
    shift
done
cd "$LEAPIO_REPO"
out=${out:-$LEAPIO_REPO/docs/benchmarks-soc-dma.md}
need_root
t0=$(now)
bash scripts/setup-host.sh >&2
log "building leapio-hostd and leapio-perf (release), socp for aarch64 and the SoC image"
cargo build --release --quiet -p leapio-host-driver --bin leapio-hostd -p leapio-tests --bin leapio-perf
bash vm-images/build-soc.sh > /dev/null
perf=$LEAPIO_REPO/target/release/leapio-perf
work=$(mktemp -d /tmp/leapio-bench-soc-dma.XXXXXX)
ssd1=$LEAPIO_DATA/bench-dma-ssd1.img ssd2=$LEAPIO_DATA/bench-dma-ssd2.img
rm -f "$ssd1" "$ssd2"
truncate -s 1G "$ssd1"
truncate -s 1G "$ssd2"
PERF_PID=''
cleanup() {
    [[ -n ${PERF_PID:-} ]] && kill "$PERF_PID" 2>/dev/null
    stop_soc > /dev/null 2>&1 || true
    stop_split > /dev/null 2>&1 || true
    rm -f "$ssd1" "$ssd2"
}
trap cleanup EXIT

sock=$LEAPIO_RUN/bench-dma.sock fsock=$LEAPIO_RUN/bench-dma-soc.sock
start_hostd "$work" "name=bench,sock=$sock,soc=$fsock" || die "leapio-hostd did not start (see $work/hostd.log)"
# The guest: a first, short run once nsid 1 is there, then one per line.
coproc PERF { exec "$perf" --sock "$sock" --wait-ns 180 --nsid 1 -q 1 -o 4k -w randread -t 1 --json --more 2> "$work/perf.log"; }
PERF_PID=$PERF_PID
wait_log "$work/hostd.log" 'vfio-user client connected' 60 "$PERF_PID" || die "leapio-perf did not connect (see $work/perf.log)"
log "booting the SoC VM: nsid 1 through VFIO, nsid 2 through the SoC's kernel"
SOC_IOMMU=1 SOC_APPEND="leapio.vfio=1 leapio.socp_args=--poller-stats" \
    start_soc "$work/soc.log" 3600 'name=bench,ns=nvme-pci:@SSD@,ns=file:@KDEV@' "$fsock" "$ssd1" "$ssd2" \
    || die "the SoC VM did not start socp (see $work/soc.log)"
wait_log "$work/hostd.log" 'runtime attached' 120 "$SOC_PID" || die "socp in the SoC did not attach (see $work/soc.log)"
IFS= read -r -t 300 first <&"${PERF[0]}" || die "leapio-perf's first run did not finish (see $work/perf.log)"
results=$work/runs.jsonl
: > "$results"
# run NAME NSID ARGS: one run, with socp's status before and after
run() {
    local name=$1 nsid=$2 args=$3 before after line
    if ((nsid == 2)); then
        soc_cmd dropcaches
        sleep 2
    fi
    before=$(soc_status | paste -sd' ')
    echo "$args --nsid $nsid -t $secs --warmup 0 --json" >&"${PERF[1]}"
    IFS= read -r -t $((secs + 120)) line <&"${PERF[0]}" || die "leapio-perf did not report (see $work/perf.log)"
    after=$(soc_status | paste -sd' ')
    "$PY" -c 'import json,sys; print(json.dumps({"workload": sys.argv[1], "nsid": int(sys.argv[2]), "before": sys.argv[3], "after": sys.argv[4], "perf": json.loads(sys.argv[5])}))' \
        "$name" "$nsid" "$before" "$after" "$line" >> "$results"
    log "$name nsid $nsid: $("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(round(d["iops"]), "IOPS")' "$line")"
}
for ((r = 1; r <= rounds; r++)); do
    order=(1 2)
    ((r % 2 == 0)) && order=(2 1)
    for n in "${order[@]}"; do run "4k randread QD32" "$n" "-q 32 -o 4k -w randread"; done
    for n in "${order[@]}"; do run "128k read QD8" "$n" "-q 8 -o 128k -w read"; done
done
exec {PERF[1]}>&-
wait "$PERF_PID" 2>/dev/null || true
PERF_PID=''
arch=$(soc_arch)
stop_soc || true
stop_split || true

"$PY" - "$results" "$out" "$secs" "$rounds" "$arch" "$(elapsed "$t0")" "$(git rev-parse --short HEAD)" <<'PY'
import json, statistics, sys, datetime, os
results, out, secs, rounds, arch, wall, rev = sys.argv[1:8]
HZ = os.sysconf("SC_CLK_TCK")  # the SoC's USER_HZ is 100 too (arm64 Linux)
def status(s):
    j, _, cpu = s.rpartition(" ")
    d = json.loads(j)
    return d, int(cpu)
rows = {}
for l in open(results):
    r = json.loads(l)
    (b, bc), (a, ac) = status(r["before"]), status(r["after"])
    n = r["nsid"]
    def copied(d):
        return next(ns["copied_bytes"] for c in d["controllers"] for ns in c["namespaces"] if ns["nsid"] == n)
    ios = r["perf"]["ios"]
    busy = sum(a["pollers_busy_ns"]) - sum(b["pollers_busy_ns"])
    key = (r["workload"], n)
    rows.setdefault(key, []).append({
        "iops": r["perf"]["iops"],
        "copied_per_io": (copied(a) - copied(b)) / ios,
        "busy_us_per_io": busy / 1000 / ios,
        "cpu_us_per_io": (ac - bc) / HZ * 1e6 / ios,
    })
med = lambda v: statistics.median(v) if v else float("nan")
path = {1: "VFIO (nvme-pci)", 2: "SoC kernel (file:/dev/nvme)"}
lines = [
    "# Who moves the guest's data on the SoC: VFIO against the SoC's kernel",
    "",
    f"Generated by `bash scripts/bench-soc-dma.sh --seconds {secs} --rounds {rounds}` on "
    f"{datetime.date.today()} at commit {rev} ({wall} s). One SoC VM ({arch}, "
    "qemu-system-aarch64 TCG, 1 vCPU, virtio-iommu, GICv3) with two emulated NVMe SSDs of "
    "1 GiB: nsid 1 is the first, driven by socp through VFIO with the guest's memory in its "
    "IOMMU domain; nsid 2 the second, through the SoC's kernel nvme driver (buffered: O_DIRECT "
    "cannot pin guest memory seen through the link function's BAR, so the page cache is the "
    "bounce buffer; it is emptied before each of that path's runs, but reads within a run may "
    "still be served from it). leapio-perf on the host is the guest "
    "(`--more`: one connection for every run). socp runs with `--poller-stats`.",
    "",
    "Per I/O, medians over the rounds: *copied* is what socp's CPU copied (its status' "
    "copied_bytes), *busy* the pollers' time in loops that did work, *socp CPU* its process's "
    "CPU time (its pollers spin while commands are in flight: about 1/IOPS).",
    "",
    "| workload | path | IOPS | copied B/IO | busy us/IO | socp CPU us/IO |",
    "|---|---|---|---|---|---|",
]
for (w, n), v in sorted(rows.items()):
    lines.append(f"| {w} | {path[n]} | {med([x['iops'] for x in v]):.0f} | "
                 f"{med([x['copied_per_io'] for x in v]):.0f} | {med([x['busy_us_per_io'] for x in v]):.1f} | "
                 f"{med([x['cpu_us_per_io'] for x in v]):.1f} |")
lines.append("")
for w in sorted({w for w, _ in rows}):
    v, k = rows.get((w, 1)), rows.get((w, 2))
    if v and k:
        b1, b2 = med([x["busy_us_per_io"] for x in v]), med([x["busy_us_per_io"] for x in k])
        lines.append(f"- {w}: VFIO's busy time per I/O is {b1 / b2:.2f}x the kernel path's; "
                     f"copied bytes per I/O {med([x['copied_per_io'] for x in v]):.0f} against "
                     f"{med([x['copied_per_io'] for x in k]):.0f}.")
lines += ["", "Under TCG these times measure the emulator more than the SoC: indicative only. "
          "The copied bytes are exact. The VFIO SSD's transfers land in the link function's RAM "
          "BAR, which QEMU's DMA cannot map directly: QEMU bounces them through one buffer of its "
          "own (a real SSD's peer-to-peer DMA would not), which is why that path's IOPS are low; "
          "a poller that waits for it counts that wait as busy time when an MMIO access stalls.", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
log "report: $out"
