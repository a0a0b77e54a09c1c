#!/usr/bin/env bash
# Side-by-side guest benchmark, same guest image, same accelerator, same
# backing file: fio 4k randread QD32 (libaio, direct, time-based) on
#   socp    our controller over vfio-user (socp serves the file)
#   nvme    QEMU's emulated NVMe (-device nvme, cache=none, aio=io_uring)
#   virtio  virtio-blk (cache=none, aio=io_uring, 2 queues)
# Prints IOPS, p99 completion latency and boot-to-fio time (host clock from
# QEMU start to the guest's first fio start marker) for each, and the ratios.
#
# usage: bash scripts/bench-guest.sh [--runtime SEC] [--only socp,nvme,virtio] [--json]
#   --runtime  fio runtime per target (default 15)
#   --pollers  socp --pollers (default 1)
#   --socp-args 'ARGS'  more socp options (e.g. '--io-wait-us 100')
#   --smp N    guest vCPUs (default 2). On a 2-core host, 1 leaves socp's
#              poller a core of its own, as on a DPU
#   --json     the last line is a JSON object with the figures
#   LEAPIO_ACCEL=auto|kvm|tcg (default auto). Under TCG the figures measure
#   the emulator more than the storage path: compare them only with each other.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

runtime=15 only=socp,nvme,virtio json=0 pollers=1 socp_args='' smp=2
while (($#)); do
    case $1 in
    --runtime) runtime=$2; shift ;;
    --only) only=$2; shift ;;
    --pollers) pollers=$2; shift ;;
    --socp-args) socp_args=$2; shift ;;
    --smp) smp=$2; shift ;;
    --json) json=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "bench-guest.sh: unknown option $1" ;;
    esac
    shift
done
need_root
cd "$LEAPIO_REPO"
bash vm-images/build.sh >/dev/null || die "vm-images/build.sh failed"
trap 'stop_guest; stop_socp >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM

logs=$LEAPIO_CACHE/logs/bench
mkdir -p "$logs"
# one backing file for all targets, filled with data once (reading holes of a
# sparse file would flatter whoever reads them)
disk=$LEAPIO_DATA/bench-disk.img
size_mib=128 # fio region = size_mib x vCPUs
if [[ ! -f $disk.filled ]]; then
    log "filling $disk (1 GiB file, first 256 MiB with random data)"
    truncate -s 1G "$disk"
    dd if=/dev/urandom of="$disk" bs=1M count=256 conv=notrunc status=none
    touch "$disk.filled"
fi

# resolve the accelerator once so that every target uses the same
accel=${LEAPIO_ACCEL:-auto}
if [[ $accel == auto ]]; then
    bash scripts/run-guest.sh --quiet --job probe --log "$logs/accel-probe.log" --timeout 120 \
        || die "the guest does not boot (see $logs/accel-probe.log)"
    accel=$(sed -n 's/^accel=//p' "$logs/accel-probe.log.meta")
fi
log "benchmark: 4k randread QD32, ${runtime}s per target, accel $accel, targets $only"

results=()
for t in ${only//,/ }; do
    glog=$logs/$t.guest.log
    case $t in
    socp)
        # shellcheck disable=SC2086 # socp_args is a list of options
        start_leapio "$logs/socp.log" --pollers "$pollers" $socp_args --ctrl "sock=$LEAPIO_RUN/bench.sock,ns=file:$disk" \
            || die "socp did not start (see $logs/socp.log)"
        d=(--disk "vfio-user:$LEAPIO_RUN/bench.sock")
        ;;
    nvme) d=(--disk "nvme:$disk") ;;
    virtio) d=(--disk "virtio:$disk") ;;
    *) die "unknown target $t (socp, nvme, virtio)" ;;
    esac
    rc=0
    run_guest --quiet --accel "$accel" --smp "$smp" --job bench "${d[@]}" --log "$glog" \
        --timeout $((runtime + 240)) --append "leapio.runtime=$runtime leapio.size=$size_mib" || rc=$?
    if [[ $t == socp ]]; then
        stop_socp || log "warning: socp did not stop cleanly"
    fi
    if ((rc != 0)); then
        guest_tail "$glog" 15
        die "benchmark on $t failed (run-guest exit $rc, log $glog)"
    fi
    b2f=$(sed -n 's/^boot_to_fio_s=//p' "$glog.meta")
    line=$(guestlog fio "$glog" bench | head -1)
    # disk interrupts in the guest over the fio run (ramp included)
    irqs=$(sed -n 's/.*@@LEAPIO BENCH-IRQS \([0-9]*\).*/\1/p' "$glog" | tail -1)
    results+=("$("$PY" -c '
import json, sys
d = json.loads(sys.argv[1])
d["target"] = sys.argv[2]
d["boot_to_fio_s"] = float(sys.argv[3] or "nan")
d["vcpus"] = int(sys.argv[6])
if sys.argv[4]:
    d["irqs_per_io"] = int(sys.argv[4]) / max(d["iops"] * (float(sys.argv[5]) + 1), 1)
print(json.dumps(d))' "$line" "$t" "$b2f" "$irqs" "$runtime" "$smp")")
    log "$t: $(echo "${results[-1]}" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print("%.0f IOPS, p99 %s us, %s interrupts per I/O" % (d["iops"], d["clat_p99_us"], "%.2f" % d["irqs_per_io"] if "irqs_per_io" in d else "?"))'), boot-to-fio ${b2f}s"
done

jflag=()
((json)) && jflag=(--json)
printf '%s\n' "${results[@]}" | guestlog bench-table - "$accel" "$runtime" "${jflag[@]}"
