#!/usr/bin/env bash
# The ReFlex experiment on socp's QoS scheduler.
#
# One socp (one poller) serves two vfio-user controllers, "lc" and "be",
# whose namespaces are the same emulated flash device (the flash backend's
# timing model gives it a real latency-vs-load curve). The device is first
# calibrated (socp calibrate). Then, at three load levels of the
# latency-critical tenant (a share of the device's token rate at the SLO),
# without and with the scheduler:
#   - lc: leapio-perf, open loop at a fixed rate, 4 KiB random reads;
#   - be: leapio-perf, closed loop, as hard as it can, 4 KiB random
#     reads and writes (--be-read-pct, 50 by default).
# Prints a table (LC p95 and IOPS, BE throughput, BE share of the capacity
# the LC tenant leaves) and writes docs/benchmarks-qos.md.
#
#   bash scripts/bench-qos.sh [--seconds N] [--levels "0.2 0.4 0.6"] [--slo p95:4ms]
#                             [--flash 'channels=2&dies=2&...'] [--be-read-pct 50] [--feedback auto|80|off]
#                             [--calibration DIR] [--no-build]
#
# --calibration DIR keeps the calibration (the model, its log and the
# preconditioned flash file as the calibration left it) in DIR, and reuses
# it when DIR already holds one: runs that compare scheduler settings then
# share one device model (calibrations on this machine price a write at
# 6.4-10.8 tokens from run to run).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=8
WARMUP=2
LEVELS="0.2 0.4 0.6"
SLO="p95:6ms"
FLASH="channels=2&dies=2&blocks=64&pages=32&read=500&prog=3000&erase=3000&op=3"
BE_READ=50
# The LC tenant's bucket: 200 ms of its rate. leapio-perf, sharing CPU 1
# with the BE harness (and this machine's other work), sends in bursts
# after each wait for the CPU; a shallower bucket holds those back.
LC_BURST_US=200000
# The feedback's target: auto (socp's default: the SLO less min(10%, 100 us)),
# a percentage of the SLO, or off.
FEEDBACK=auto
BUILD=1
CAL_DIR=
OUT=docs/benchmarks-qos.md
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECS=$2; shift 2 ;;
        --levels) LEVELS=$2; shift 2 ;;
        --slo) SLO=$2; shift 2 ;;
        --flash) FLASH=$2; shift 2 ;;
        --be-read-pct) BE_READ=$2; shift 2 ;;
        --feedback) FEEDBACK=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --calibration) CAL_DIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n 2,28p "$0"; exit 0 ;;
        *) echo "bench-qos.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$BUILD" = 1 ]; then
    cargo build --release -p socp -p leapio -p leapio-tests -p leapio-host-driver --bins >&2
fi
SOCP=target/release/socp
LEAPIO=target/release/leapio
PERF=target/release/leapio-perf
CTL=target/release/leapioctl
# On tmpfs: the flash backend's fdatasync (flushes, GC) then costs nothing
# beyond the timing model, not this machine's disk.
TMP=$(mktemp -d /dev/shm/leapio-qos.XXXXXX)
SOCP_PID=
cleanup() {
    if [ -n "$SOCP_PID" ]; then kill "$SOCP_PID" 2>/dev/null || true; wait "$SOCP_PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

DEV="flash:$TMP/dev.flash?$FLASH"
CAL_ARGS=(--slo "$SLO" --mixes 100,90,70,50 --step-seconds 2 --start-iops 500 --factor 1.15 --max-steps 24)
CAL_CMD="$SOCP calibrate '$DEV' ${CAL_ARGS[*]} --out MODEL"
CAL_FILES=(dev.json dev.flash calibrate.log)
CAL_PARAMS="slo=$SLO flash=$FLASH"
if [ -n "$CAL_DIR" ] && [ -f "$CAL_DIR/dev.json" ]; then
    if [ "$(cat "$CAL_DIR/params" 2>/dev/null)" != "$CAL_PARAMS" ]; then
        echo "bench-qos.sh: $CAL_DIR holds a calibration for '$(cat "$CAL_DIR/params" 2>/dev/null)', not '$CAL_PARAMS'" >&2
        exit 2
    fi
    echo "== reusing the calibration in $CAL_DIR" >&2
    for f in "${CAL_FILES[@]}"; do cp "$CAL_DIR/$f" "$TMP/$f"; done
    CAL_CMD="$CAL_CMD   (reused from an earlier run: --calibration)"
else
    echo "== calibrating the device (socp calibrate)" >&2
    $SOCP calibrate "$DEV" "${CAL_ARGS[@]}" --out "$TMP/dev.json" 2> "$TMP/calibrate.log" || {
        cat "$TMP/calibrate.log" >&2; exit 1; }
    if [ -n "$CAL_DIR" ]; then
        mkdir -p "$CAL_DIR"
        for f in "${CAL_FILES[@]}"; do cp "$TMP/$f" "$CAL_DIR/$f"; done
        echo "$CAL_PARAMS" > "$CAL_DIR/params"
    fi
fi
cat "$TMP/calibrate.log" >&2

start_socp() { # $1: off|on, $2: LC IOPS
    local qos=()
    if [ "$1" = on ]; then
        qos=(--qos "device=$TMP/dev.json,lc-burst-us=$LC_BURST_US,feedback=$FEEDBACK"
             --tenant "name=lc,ctrl=lc,class=lc,slo=$SLO,iops=$(( $2 * 12 / 10 )),rw=100:0"
             --tenant "name=be,ctrl=be,class=be")
    fi
    rm -f "$TMP/lc.sock" "$TMP/be.sock" "$TMP/ctl.sock"
    $LEAPIO --pollers 1 --poller-cpus 0 --io-wait-us 200 --control "$TMP/ctl.sock" --log-level warn \
        --ctrl "name=lc,sock=$TMP/lc.sock,ns=$DEV" --ctrl "name=be,sock=$TMP/be.sock,ns=$DEV" \
        "${qos[@]}" 2>> "$TMP/socp.log" &
    SOCP_PID=$!
    for _ in $(seq 100); do
        [ -S "$TMP/lc.sock" ] && [ -S "$TMP/be.sock" ] && [ -S "$TMP/ctl.sock" ] && return 0
        sleep 0.1
    done
    echo "socp did not start:" >&2; cat "$TMP/socp.log" >&2; exit 1
}
stop_socp() {
    kill "$SOCP_PID"; wait "$SOCP_PID" || true; SOCP_PID=
}

# The device's token rate at the SLO, as the scheduler computes it.
start_socp on 1
$CTL -s "$TMP/ctl.sock" qos-stats > "$TMP/model-stats.json"
stop_socp
RATE=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["operating_rate"]))' "$TMP/model-stats.json")
WCOST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["write_cost"])' "$TMP/model-stats.json")
echo "== device: $RATE tokens/s at $SLO, a 4 KiB write costs $WCOST tokens" >&2

LC_CMD="$PERF --sock lc.sock -w randread -o 4k -q 64 --rate LC_IOPS --idle-sleep-us 50 --cpu 1 -t $SECS --warmup $WARMUP --json"
BE_CMD="$PERF --sock be.sock -w randrw -M $BE_READ -o 4k -q 32 --irq-wait --cpu 1 -t $SECS --warmup $WARMUP --json"
for level in $LEVELS; do
    lc_iops=$(python3 -c "print(max(1, int($RATE * $level)))")
    for mode in off on; do
        echo "== LC at $lc_iops IOPS ($level of the rate), QoS $mode" >&2
        start_socp "$mode" "$lc_iops"
        $PERF --sock "$TMP/be.sock" -w randrw -M "$BE_READ" -o 4k -q 32 --irq-wait --cpu 1 \
            -t "$SECS" --warmup "$WARMUP" --json > "$TMP/be-$level-$mode.json" 2> "$TMP/be.err" &
        be_pid=$!
        $PERF --sock "$TMP/lc.sock" -w randread -o 4k -q 64 --rate "$lc_iops" --idle-sleep-us 50 \
            --cpu 1 -t "$SECS" --warmup "$WARMUP" --json > "$TMP/lc-$level-$mode.json" 2> "$TMP/lc.err" || {
            cat "$TMP/lc.err" >&2; exit 1; }
        wait "$be_pid" || { cat "$TMP/be.err" >&2; exit 1; }
        if [ "$mode" = on ]; then
            $CTL -s "$TMP/ctl.sock" qos-stats > "$TMP/stats-$level.json"
        fi
        stop_socp
    done
done

python3 - "$TMP" "$RATE" "$WCOST" "$SLO" "$LEVELS" "$OUT" "$SECS" "$WARMUP" "$FLASH" "$BE_READ" \
    "$CAL_CMD" "$LC_CMD" "$BE_CMD" "$FEEDBACK" <<'EOF'
import json, os, sys, platform, subprocess
tmp, rate, wcost, slo, levels, out, secs, warmup, flash, be_read, cal_cmd, lc_cmd, be_cmd, feedback = sys.argv[1:]
fb_target = {'auto': 'the SLO less min(10%, 100 us)', 'off': 'none (off)'}.get(feedback, feedback.rstrip('%') + '% of the SLO')
rate = float(rate); wcost = float(wcost)
slo_us = slo.split(":")[1]
mult = 1000.0 if slo_us.endswith("ms") else 1.0
slo_val = float(slo_us.rstrip("ums")) * mult
rows = []
for level in levels.split():
    for mode in ("off", "on"):
        lc = json.load(open(f"{tmp}/lc-{level}-{mode}.json"))
        be = json.load(open(f"{tmp}/be-{level}-{mode}.json"))
        lc_iops = lc["iops"]
        lc_p95 = lc["latency"]["p95_us"]
        lc_p99 = lc["latency"]["p99_us"]
        be_iops = be["iops"]
        be_r = be_iops * be["reads"] / max(1, be["ios"])
        be_w = be_iops * be["writes"] / max(1, be["ios"])
        be_tok = be_r + be_w * wcost
        leftover = max(1.0, rate - lc_iops)
        socp_p95 = None
        scale = None
        if mode == "on" and os.path.exists(f"{tmp}/stats-{level}.json"):
            st = json.load(open(f"{tmp}/stats-{level}.json"))
            socp_p95 = next((t["lat_p95_us"] for t in st["tenants"] if t["name"] == "lc"), None)
            fb = st.get("feedback")
            scale = fb.get("be_scale") if isinstance(fb, dict) else None
        rows.append(dict(level=level, mode=mode, socp_p95=socp_p95, scale=scale, target=lc["open_loop_rate"], lc_iops=lc_iops,
                         lc_p95=lc_p95, lc_p99=lc_p99, met=lc_p95 <= slo_val,
                         be_iops=be_iops, be_r=be_r, be_w=be_w, be_tok=be_tok, leftover=leftover,
                         share=be_tok / leftover, errors=lc["errors"] + be["errors"]))
hdr = ("| LC load | QoS | LC target IOPS | LC IOPS | LC p95 us | LC p99 us | SLO met | LC p95 in socp us | "
       "BE IOPS (r/w) | BE tokens/s | leftover tokens/s | BE share of leftover | BE scale at the end | errors |")
sep = "|" + "---|" * 14
lines = [hdr, sep]
for r in rows:
    lines.append(f"| {float(r['level'])*100:.0f}% | {r['mode']} | {r['target']:.0f} | {r['lc_iops']:.0f} | "
                 f"{r['lc_p95']:.0f} | {r['lc_p99']:.0f} | {'yes' if r['met'] else '**no**'} | "
                 f"{'' if r['socp_p95'] is None else format(r['socp_p95'], '.0f')} | "
                 f"{r['be_iops']:.0f} ({r['be_r']:.0f}/{r['be_w']:.0f}) | {r['be_tok']:.0f} | "
                 f"{r['leftover']:.0f} | {r['share']*100:.0f}% | "
                 f"{'' if r['scale'] is None else format(r['scale'], '.2f')} | {r['errors']} |")
table = "\n".join(lines)
print(table)
cal = open(f"{tmp}/calibrate.log").read().strip()
stats = {}
for level in levels.split():
    p = f"{tmp}/stats-{level}.json"
    if os.path.exists(p):
        stats[level] = json.load(open(p))
nproc = os.cpu_count()
load = open("/proc/loadavg").read().split()[:3]
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except Exception:
    commit = "?"
md = f"""# QoS: the ReFlex experiment

Generated by `bash scripts/bench-qos.sh --seconds {secs}{'' if feedback == 'auto' else ' --feedback ' + feedback}` (do not edit: run it again) on {nproc} CPUs
(load average at the end {' '.join(load)}; a shared machine: other builds and a niced fuzzer ran too),
commit {commit}.

One socp, one poller (CPU 0), serves two vfio-user controllers, `lc` and `be`, whose namespaces are one
emulated flash device, `flash:...?{flash}` (2 channels x 2 dies; read 500 us, program and erase 3 ms, over-provisioned 3x (op=3: garbage collection stays cheap), a media file on tmpfs:
a slow device, so that its latency-vs-load curve dominates this 2-core machine's scheduling noise).
Both tenants are `leapio-perf` processes on CPU 1: `lc` reads 4 KiB at random in open loop at a fixed
rate (latency from each I/O's due time; it sleeps 50 us when idle), `be` runs 4 KiB random
{be_read}:{100-int(be_read)} reads:writes in closed loop at QD32, sleeping on its interrupts, as hard as it can.
Each cell is {secs} s measured after {warmup} s of warm-up, socp restarted for each.

**Device model** (`socp calibrate`): **{rate:.0f} tokens/s at {slo}**, a 4 KiB write costs
**{wcost:.2f}** tokens (a read 1). *Leftover* is that rate minus the LC tenant's tokens (its IOPS:
reads cost 1); *BE tokens/s* are BE reads + BE writes x the write cost; *BE share of leftover* is
their ratio (above 100% without QoS: BE takes capacity the SLO needed). *LC p95* is what the LC
harness measured (from each read's due time: its own waits for a CPU included); *LC p95 in socp* is
the scheduler's own figure for the tenant (from taking the command off the queue to its completion,
over the whole run, warm-up included; `leapioctl qos-stats`). *BE scale* is the share of its rate the
feedback left best effort at the end of the run (1: the model's whole leftover; below 1: the device's
read tail for the LC tenant was over the feedback's target, {fb_target}, and best effort was cut). With QoS the tenants are
`--qos device=MODEL,lc-burst-us=200000,feedback={feedback} --tenant name=lc,ctrl=lc,class=lc,slo={slo},iops=<LC target x 1.2>,rw=100:0 --tenant name=be,ctrl=be,class=be`
(20% of headroom, and a bucket of 200 ms: the LC harness sends in bursts after each wait for a CPU, and a tenant paced at
exactly its reservation keeps whatever backlog a burst gives it).

{table}

Target: with the scheduler, the LC tenant's p95 within {slo} at every level and BE at >= 80% of the
leftover.

## Commands

```
{cal_cmd}
leapio --pollers 1 --poller-cpus 0 --control ctl.sock --ctrl 'name=lc,sock=lc.sock,ns=flash:...' --ctrl 'name=be,sock=be.sock,ns=flash:...' \\
     [--qos device=MODEL,lc-burst-us=200000,feedback={feedback} --tenant name=lc,ctrl=lc,class=lc,slo={slo},iops=LC_IOPS*1.2,rw=100:0 --tenant name=be,ctrl=be,class=be]
{lc_cmd}
{be_cmd}
leapioctl -s ctl.sock qos-stats
```

## Calibration output

```
{cal}
```

## The scheduler's own statistics (`leapioctl qos-stats`, end of each QoS run)

```
{json.dumps({k: {"feedback": v.get("feedback"), "tenants": [{kk: t[kk] for kk in ('name', 'ios', 'iops', 'tokens_used', 'throttled_cmds', 'throttled_ms', 'lat_p50_us', 'lat_p95_us', 'lat_p99_us')} for t in v['tenants']]} for k, v in stats.items()}, indent=1)}
```
"""
open(out, "w").write(md)
print(f"\nwritten to {out}", file=sys.stderr)
EOF
