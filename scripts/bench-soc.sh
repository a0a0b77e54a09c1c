#!/usr/bin/env bash
# The three deployments side by side, and restarts in the SoC:
#  (1) the same guest and the same backend (a 512 MiB RAM namespace in the
#      runtime) served all-in-one (--soc in-process), split into two host
#      processes (--soc process), and by socp on aarch64 in the SoC VM
#      (--soc vm): scripts/demo.sh --json for each, in alternating rounds;
#      boot-to-fio time (runtime(s) and VMs started to the guest's first
#      fio phase) and the guest's fio figures.
#  (2) kill -9 of socp in the SoC VM to the first completion its successor
#      serves: leapio-perf QD1 4 KiB randread from the host against socp in
#      the SoC (a file in the SoC's RAM), socp killed and restarted 2 s in;
#      the run's maximum latency is that time. Each round on a fresh SoC VM.
# Both VMs run under TCG here (the guest under KVM where it works, see
# LEAPIO_ACCEL): the absolute figures are an emulator's; the ratios between
# deployments on the same machine are what to read.
#
# usage: bash scripts/bench-soc.sh [--out FILE]
#   --out FILE   the Markdown report (default docs/benchmarks-soc.md)
#   BENCH_SOC_ROUNDS=2 rounds of (1); BENCH_SOC_RESTARTS=3 rounds of (2);
#   BENCH_SOC_RUNTIME=5 seconds of the guest's randread phase
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

out=''
while (($#)); do
    case $1 in
    --out) out=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-soc.sh: unknown option $1 (--help)" ;;
    esac
    shift
done
need_root
cd "$LEAPIO_REPO"
out=${out:-$LEAPIO_REPO/docs/benchmarks-soc.md}
ROUNDS=${BENCH_SOC_ROUNDS:-2}
RESTARTS=${BENCH_SOC_RESTARTS:-3}
RUNTIME=${BENCH_SOC_RUNTIME:-5}
work=$(mktemp -d /tmp/leapio-bench-soc.XXXXXX)
results=$work/results.jsonl
PERF_PID=''
cleanup() {
    if [[ -n $PERF_PID ]]; then kill "$PERF_PID" 2>/dev/null || true; fi
    if [[ -n $SOC_PID ]]; then stop_soc >/dev/null 2>&1 || true; fi
    if [[ -n $HOSTD_PID ]]; then stop_split >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building socp, leapio-hostd and leapio-perf (release), the images"
cargo build --release --quiet -p socp -p leapio-host-driver -p leapio-tests --bins \
    || die "cargo build --release failed"
bash vm-images/build.sh > /dev/null || die "vm-images/build.sh failed"
bash vm-images/build-soc.sh > /dev/null || die "vm-images/build-soc.sh failed"
PERF=$LEAPIO_REPO/target/release/leapio-perf

# ---- (1) the deployments, alternating ----
demo_cmd=(bash scripts/demo.sh --storage ram --runtime "$RUNTIME" --json)
for r in $(seq 1 "$ROUNDS"); do
    for soc in in-process process vm; do
        log "round $r: --soc $soc"
        line=$("${demo_cmd[@]}" --soc "$soc" 2> "$work/demo-$soc-$r.err" | tail -n 1) \
            || die "demo.sh --soc $soc failed: $line (see $work/demo-$soc-$r.err)"
        "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(round=int(sys.argv[2]), scenario="deploy"); print(json.dumps(d))' \
            "$line" "$r" >> "$results"
    done
done

# ---- (2) kill -9 to first completion, in the SoC ----
fsock=$LEAPIO_RUN/bench-soc-fn.sock sock=$LEAPIO_RUN/bench-soc.sock
perf_cmd=("$PERF" --sock "$sock" --wait-ns 120 -q 1 -o 4k -w randread --range 16M -t 5 --warmup 0.5 --json)
for i in $(seq 1 "$RESTARTS"); do
    log "restart $i: leapio-hostd, leapio-perf, the SoC VM"
    start_hostd "$work/restart-$i" "name=bench,sock=$sock,soc=$fsock" || die "leapio-hostd did not start"
    "${perf_cmd[@]}" > "$work/restart-$i.json" 2> "$work/restart-$i.err" &
    PERF_PID=$!
    wait_log "$work/restart-$i/hostd.log" 'vfio-user client connected' 60 "$PERF_PID" \
        || die "leapio-perf did not connect (see $work/restart-$i.err)"
    SOC_APPEND="leapio.scratch=16" start_soc "$work/restart-$i/soc.log" 300 \
        "name=bench,ns=file:/tmp/scratch.img" "$fsock" || die "the SoC VM did not start socp"
    # the measured run starts once the namespace is there (prefill, warm-up)
    wait_log "$work/restart-$i/hostd.log" 'runtime attached' 60 "$SOC_PID" || die "socp did not attach"
    sleep 2.5
    soc_cmd restart
    wait "$PERF_PID" || die "leapio-perf failed during the restart run (see $work/restart-$i.err)"
    PERF_PID=''
    stop_soc || log "warning: the SoC VM did not stop cleanly"
    stop_split || log "warning: leapio-hostd did not stop cleanly"
    "$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); d.update(scenario="restart", round=int(sys.argv[2])); print(json.dumps(d))' \
        "$work/restart-$i.json" "$i" >> "$results"
done

"$PY" - "$results" "$out" "${demo_cmd[*]}" "${perf_cmd[*]/$LEAPIO_REPO\//}" "$ROUNDS" <<'EOF'
import json, statistics, sys, platform, subprocess
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
out, demo_cmd, perf_cmd, rounds = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
dep = [r for r in runs if r["scenario"] == "deploy"]
def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None
def phase(r, name, key):
    for p in r.get("fio", []):
        if p["name"] == name:
            return p.get(key)
    return None
def f(v, fmt="{:,.1f}"):
    return "n/a" if v is None else fmt.format(v)
accel = sorted({r.get("accel", "?") for r in dep})
md = ["# The deployments side by side, and restarts in the SoC", "",
      "Generated by `bash scripts/bench-soc.sh` on %s (%d CPUs), guest accelerator: %s; the SoC VM is "
      "qemu-system-aarch64 under TCG, one vCPU. Both VMs and every runtime share this machine's "
      "cores, and TCG is an emulator: absolute figures are an emulator's; compare the rows." % (
          platform.node() or "this machine", __import__("os").cpu_count(), ", ".join(accel)), "",
      "## Boot to fio, and the guest's fio, per deployment", "",
      "Same guest (2 vCPUs, stock Linux nvme driver), same backend (a 512 MiB RAM namespace in "
      "the runtime), `%s --soc X`, medians of %s alternating rounds. Boot to fio: from starting the "
      "runtime(s) to the guest's first fio phase (VM boots included; for `vm` the SoC VM boots "
      "once the guest's QEMU has connected)." % (demo_cmd, rounds), "",
      "| deployment | where socp runs | boot to fio s | write IOPS | verify IOPS | 4k randread QD32 IOPS | randread p99 us | verify |",
      "|---|---|---|---|---|---|---|---|"]
where = {"in-process": "in the host's socp process (all-in-one)",
         "process": "another host process (split)",
         "vm": "the SoC VM (split over the link function)"}
rows = {}
for soc in ("in-process", "process", "vm"):
    rs = [r for r in dep if r.get("soc") == soc]
    if not rs:
        continue
    rows[soc] = {k: med([phase(r, n, key) for r in rs]) for k, n, key in
                 (("w", "write", "iops"), ("v", "verify", "iops"), ("r", "randread", "iops"),
                  ("p99", "randread", "clat_p99_us"))}
    rows[soc]["boot"] = med([r.get("boot_to_fio_s") for r in rs])
    md.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
        soc, where[soc] + (" (%s)" % rs[0]["soc_arch"] if rs[0].get("soc_arch") else ""),
        f(rows[soc]["boot"]), f(rows[soc]["w"], "{:,.0f}"), f(rows[soc]["v"], "{:,.0f}"),
        f(rows[soc]["r"], "{:,.0f}"), f(rows[soc]["p99"], "{:,.0f}"),
        "/".join(sorted({r["verify"] for r in rs}))))
if "in-process" in rows:
    md += ["", "Under TCG the guest's emulated vCPUs bound its fio, not the storage path, and every "
           "runtime shares the 2 host cores with them: single runs of the same deployment differ "
           "by up to 20%. Read the rows as: all three serve the same guest with the same results "
           "and comparable speed, not as a ranking.", ""]
    base = rows["in-process"]
    for soc in ("process", "vm"):
        if soc in rows and base["r"] and rows[soc]["r"]:
            md.append("- %s vs in-process: randread IOPS **%s**, boot to fio **%s s**" % (
                soc, f(rows[soc]["r"] / base["r"], "{:.0%}"),
                f((rows[soc]["boot"] or 0) - (base["boot"] or 0), "{:+.1f}")))
rs = [r for r in runs if r["scenario"] == "restart"]
if rs:
    md += ["", "## kill -9 of socp in the SoC VM to the first completion of its successor", "",
           "leapio-perf on the host plays the VM (QD1 4 KiB randread; `%s`) against socp in the "
           "SoC VM serving a file in the SoC's RAM; 2.5 s after socp attached, the SoC's init kills "
           "it with SIGKILL and starts a new one. The I/O that waits for the successor has the run's "
           "maximum latency: kill, start of the new aarch64 process under TCG, opening the function, "
           "Hello, attach, recovery from the queue-state area, first completion. A fresh SoC VM per "
           "round." % perf_cmd, "",
           "| round | IOPS over the run | p50 us | max latency ms (kill to first completion) | errors | lost |",
           "|---|---|---|---|---|---|"]
    for r in rs:
        md.append("| %d | %s | %s | %s | %d | %d |" % (
            r["round"], f(r["iops"], "{:,.0f}"), f(r["latency"]["p50_us"]),
            f(r["latency"]["max_us"] / 1000, "{:,.0f}"), r["errors"], r["lost"]))
open(out, "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
log "report: $out (raw results: $results)"
