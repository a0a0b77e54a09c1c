#!/usr/bin/env bash
# The LeapIO demo: a stock Linux guest (QEMU >= 10.1, vfio-user-pci) runs its
# own nvme driver, nvme-cli and fio on a virtual NVMe controller served by
# socp from a 1 GiB file on the host.
#
# usage: bash scripts/demo.sh [--soc in-process|process|vm] [--restart-socp]
#                             [--restart-hostd]
#                             [--storage file|ssd|ssd-kernel|ram|tcp] [--json]
#                             [--runtime SEC] [--timeout SEC]
#   --soc in-process  (default) one socp process: host-driver and runtime
#                  linked inside it
#   --soc process  the LeapIO split: leapio-hostd owns the VM's vfio-user
#                  connection and control plane, socp (the runtime) runs in
#                  another process and serves the I/O queues over the link
#   --soc vm       the LeapIO deployment: socp (built for aarch64) runs in an
#                  emulated ARM SoC VM (qemu-system-aarch64, TCG) and reaches
#                  the guest's queues through a PCI function leapio-hostd
#                  provides (the link function)
#   --storage      where the runtime keeps the guest's disk:
#                  file  (default on the host) a 1 GiB file on the host
#                  ssd   (default, and only, with vm) the SoC's own NVMe SSD
#                        (QEMU's emulated NVMe in the SoC VM, on a 1 GiB file),
#                        driven by socp from user space through VFIO: the SSD
#                        moves the guest's data itself (the SoC VM gets an
#                        IOMMU and a GICv3)
#                  ssd-kernel  the same SSD through the SoC's kernel driver
#                        (/dev/nvme0n1): the SoC's CPU copies the data
#                  ram   a RAM namespace of 512 MiB in the runtime (cannot be
#                        taken over by a restarted socp: not with
#                        --restart-socp)
#                  tcp   a remote NVMe/TCP namespace: another socp on the host
#                        exports the 1 GiB file as an NVMe/TCP target on
#                        127.0.0.1; an SoC reaches it through its NIC (QEMU
#                        user networking: the host's loopback is 10.0.2.2)
#   --restart-socp with --soc process or vm: kill -9 socp twice while fio runs in
#                  the guest (during the verified write and during the
#                  randread phase) and start a new one each time; the guest
#                  must not notice (no I/O error, no nvme timeout or reset,
#                  fio's verify clean)
#   --restart-hostd with --soc process: leapio-hostd keeps its descriptors
#                  and device state in an fd keeper (--keep); while fio runs
#                  it is upgraded in place once (a new one with --handover)
#                  and killed with SIGKILL and started again once; the guest
#                  must not notice
#   --json         the last line of stdout is one JSON object:
#                  {"accel","model","namespaces","fio":[{name,iops,bw_kib_s,
#                   clat_p99_us,errors}],"verify":"ok"|"<reason>","soc",
#                   "storage", "soc_arch" (with vm: uname -m in the SoC),
#                   "boot_to_fio_s" (from starting the runtime(s) to the
#                   guest's first fio phase),
#                   "socp_restarts","hostd_restarts","guest_io_errors",
#                   "guest_nvme_resets",
#                   "copied_bytes" (bytes of I/O data the serving runtime's
#                   CPU copied since it started), ...}
#   --runtime SEC  length of the timed 4k randread phase (default 5)
#   --timeout SEC  hard limit for the guest run (default 420)
#   LEAPIO_ACCEL=auto|kvm|tcg chooses the accelerator (default auto).
#
# Steps: setup-host.sh, cargo build --release -p socp -p leapio -p leapio-host-driver -p leapioctl,
# vm-images/build.sh, backing file, socp (and leapio-hostd) in the
# background, one guest boot running the `info` and `fio` jobs, summary;
# everything is stopped on exit.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

json=0 runtime=5 timeout=420 soc=in-process restart=0 restart_hostd=0 storage=
while (($#)); do
    case $1 in
    --json) json=1 ;;
    --soc) soc=${2:-}; shift ;;
    --restart-socp) restart=1 ;;
    --restart-hostd) restart_hostd=1 ;;
    --storage) storage=${2:-}; shift ;;
    --runtime) runtime=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "demo.sh: unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $soc == in-process || $soc == process || $soc == vm ]] || die "demo.sh: --soc must be in-process, process or vm"
((restart_hostd == 0)) || [[ $soc == process ]] || die "demo.sh: --restart-hostd needs --soc process"
((restart_hostd == 0)) || ((restart == 0)) || die "demo.sh: --restart-hostd and --restart-socp one at a time"
((restart == 0)) || [[ $soc != in-process ]] || die "demo.sh: --restart-socp needs --soc process or vm (the in-process runtime cannot restart without the VM's device)"
if [[ -z $storage ]]; then
    storage=file
    [[ $soc == vm ]] && storage=ssd
fi
case $storage in
file) [[ $soc != vm ]] || die "demo.sh: --storage file is a file on the host: the SoC cannot see it (ssd, ram or tcp)" ;;
ssd | ssd-kernel) [[ $soc == vm ]] || die "demo.sh: --storage $storage is the SoC's SSD: it needs --soc vm" ;;
ram | tcp) ;;
*) die "demo.sh: --storage must be file, ssd, ssd-kernel, ram or tcp" ;;
esac
((restart == 0)) || [[ $storage != ram ]] || die "demo.sh: --restart-socp cannot go with --storage ram (a RAM namespace dies with socp: its successor is refused)"
need_root
cd "$LEAPIO_REPO"
t0=$(now)

fail() { # stage message
    log "demo FAILED at stage '$1': $2"
    if ((json)); then
        printf '{"verify":"demo failed at stage %s: %s"}\n' "$1" "${2//\"/\'}"
    fi
    exit 1
}
RESTARTER='' TARGET_PID='' BOOTW='' OBSERVER=''
cleanup() {
    # (each step may fail: set -e must not cut the cleanup short)
    if [[ -n $RESTARTER ]]; then kill "$RESTARTER" 2>/dev/null || true; fi
    if [[ -n $OBSERVER ]]; then kill "$OBSERVER" 2>/dev/null || true; fi
    if [[ -n $BOOTW ]]; then kill "$BOOTW" 2>/dev/null || true; fi
    stop_guest
    if [[ -n $SOC_PID ]]; then stop_soc >/dev/null 2>&1 || true; fi
    if [[ -n $HOSTD_PID ]]; then stop_split >/dev/null 2>&1 || true; fi
    stop_socp >/dev/null 2>&1 || true
    stop_pid "NVMe/TCP target" "$TARGET_PID" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "[1/5] host set-up (setup-host.sh)"
bash scripts/setup-host.sh >&2 || fail setup-host "scripts/setup-host.sh failed"

log "[2/5] building socp, leapio, leapio-hostd and leapioctl (cargo build --release -p socp -p leapio -p leapio-host-driver -p leapioctl)"
command -v cargo >/dev/null 2>&1 || fail build "cargo not found: install Rust (https://rustup.rs) and put cargo in PATH"
cargo build --release -p socp -p leapio -p leapio-host-driver -p leapioctl >&2 || fail build "cargo build --release failed"

log "[3/5] guest image (vm-images/build.sh)"
bash vm-images/build.sh >/dev/null || fail image "vm-images/build.sh failed"
if [[ $soc == vm ]]; then
    log "      and the SoC VM's (aarch64 socp: scripts/build-soc.sh, vm-images/build-soc.sh)"
    bash vm-images/build-soc.sh > /dev/null || fail image "vm-images/build-soc.sh failed"
fi

disk=$LEAPIO_DATA/demo-disk.img
[[ -f $disk ]] || truncate -s 1G "$disk"
logs=$LEAPIO_CACHE/logs/demo
mkdir -p "$logs"
rm -f "$logs"/restart-times "$logs"/boot-to-fio
sock=$LEAPIO_RUN/demo0.sock
glog=$logs/guest.log
fsock=$LEAPIO_RUN/demo0-soc.sock
ssd=$LEAPIO_DATA/demo-soc-ssd.img
# the namespace the runtime serves (ns=...), and what the SoC VM needs for it
soc_disk='' soc_net='' soc_iommu='' soc_append=''
case $storage in
file) ns=file:$disk ;;
ssd)
    [[ -f $ssd ]] || truncate -s 1G "$ssd"
    soc_disk=$ssd ns='nvme-pci:@SSD@' soc_iommu=1 soc_append=leapio.vfio=1
    ;;
ssd-kernel)
    [[ -f $ssd ]] || truncate -s 1G "$ssd"
    soc_disk=$ssd ns=file:/dev/nvme0n1
    ;;
ram) ns=ram:512M ;;
tcp)
    # the remote target: another socp on the host, NVMe/TCP only
    port=${LEAPIO_TCP_PORT:-4420} nqn=nqn.2026-11.io.leapio:demo-remote
    start_socp "$logs/target.log" --tcp-target "listen=127.0.0.1:$port,nqn=$nqn,ns=file:$disk" \
        || fail target "the NVMe/TCP target did not start (see $logs/target.log)"
    TARGET_PID=$SOCP_PID SOCP_PID=''
    wait_log "$logs/target.log" 'NVMe/TCP target listening' 30 "$TARGET_PID" \
        || fail target "the NVMe/TCP target is not listening (see $logs/target.log)"
    log "NVMe/TCP target (socp pid $TARGET_PID) on 127.0.0.1:$port, $nqn: the 1 GiB file"
    if [[ $soc == vm ]]; then
        soc_net=1 ns="nvme-tcp:10.0.2.2:$port/$nqn"
    else
        ns="nvme-tcp:127.0.0.1:$port/$nqn"
    fi
    ;;
esac
# boot to fio: from here (the runtime(s) and VMs about to start) to the
# guest's first fio phase
rm -f "$glog"
t_deploy=$(now)
{ wait_log "$glog" 'FIO-START fio write' "$timeout" && elapsed "$t_deploy" > "$logs/boot-to-fio"; } &
BOOTW=$!
if [[ $soc == vm ]]; then
    log "[4/5] leapio-hostd, with a link function for the SoC VM"
    start_hostd "$logs" "name=demo0,sock=$sock,soc=$fsock" \
        || fail hostd "leapio-hostd did not start (see $logs/hostd.log)"
    log "leapio-hostd (pid $HOSTD_PID): the VM's device at $sock, its link function for the SoC at $fsock"
elif [[ $soc == process ]]; then
    log "[4/5] starting leapio-hostd and socp (split, separate processes) serving $ns"
    ((restart_hostd == 0)) || HOSTD_KEEP=$LEAPIO_RUN/demo-keeper.sock
    start_split "$logs" demo0 "$sock" "$ns" \
        || fail socp "leapio-hostd + socp did not start (see $logs/hostd.log, $logs/socp.log)"
    log "leapio-hostd (pid $HOSTD_PID) owns vfio-user socket $sock; socp (pid $(cat "$logs/socp.pid")) serves it over the link; logs in $logs"
    if ((restart)); then
        rm -f "$glog"
        socp_restarter "$glog" "$timeout" "FIO-START fio write 1.5" "FIO-START fio randread 2" &
        RESTARTER=$!
    fi
    if ((restart_hostd)); then
        rm -f "$glog"
        {
            hostd_restarter upgrade "$glog" "$timeout" "FIO-START fio write 1" &&
                hostd_restarter crash "$glog" "$timeout" "FIO-START fio randread 2"
        } &
        RESTARTER=$!
    fi
else
    log "[4/5] starting socp serving $ns"
    start_leapio "$logs/socp.log" --ctrl "sock=$sock,ns=$ns" --control "$LEAPIO_RUN/demo-ctl.sock" \
        --metrics "unix:$LEAPIO_RUN/demo-metrics.sock" \
        || fail socp "socp did not start (see $logs/socp.log)"
    log "socp running (pid $SOCP_PID), vfio-user socket $sock, log $logs/socp.log"
fi

log "[5/5] booting the guest: info + fio jobs (LEAPIO_ACCEL=${LEAPIO_ACCEL:-auto})"
grc=0
# What an operator sees while fio runs: leapioctl top and the metrics.
rm -f "$logs/top.txt" "$logs"/metrics-*.txt
if [[ $soc == process ]]; then
    [[ -n $RESTARTER ]] || rm -f "$glog"
    observe "$glog" "$timeout" "$LEAPIO_RUN/socp-ctl.sock" "$logs" \
        "$LEAPIO_RUN/socp-metrics.sock" "$LEAPIO_RUN/hostd-metrics.sock" &
    OBSERVER=$!
elif [[ $soc == in-process ]]; then
    rm -f "$glog"
    observe "$glog" "$timeout" "$LEAPIO_RUN/demo-ctl.sock" "$logs" "$LEAPIO_RUN/demo-metrics.sock" &
    OBSERVER=$!
fi
if [[ $soc == vm ]]; then
    # The SoC VM starts once the guest's hypervisor has mapped the guest's
    # memory: it is the link function's window.
    rm -f "$glog"
    bash scripts/run-guest.sh --job info,fio --disk "vfio-user:$sock" --log "$glog" \
        --timeout "$timeout" --append "leapio.runtime=$runtime leapio.wait=120" &
    GUEST_PID=$!
    wait_log "$logs/hostd.log" 'vfio-user client connected' 60 "$GUEST_PID" \
        || fail guest "the guest's QEMU never connected (see $glog.stderr)"
    log "booting the SoC VM (qemu-system-aarch64, TCG): socp --link pci --ctrl name=demo0,ns=$ns"
    SOC_NET=$soc_net SOC_IOMMU=$soc_iommu SOC_APPEND="leapio.net=${soc_net:-0} $soc_append" \
        start_soc "$logs/soc.log" "$timeout" "name=demo0,ns=$ns" "$fsock" "$soc_disk" \
        || fail soc "the SoC VM did not start socp (see $logs/soc.log)"
    log "SoC VM up ($(soc_arch)); its console: $logs/soc.log"
    if ((restart)); then
        socp_restarter "$glog" "$timeout" "FIO-START fio write 3" "FIO-START fio randread 2" &
        RESTARTER=$!
    fi
    wait "$GUEST_PID" || grc=$?
    GUEST_PID=''
else
    run_guest --job info,fio --disk "vfio-user:$sock" --log "$glog" \
        --timeout "$timeout" --append "leapio.runtime=$runtime" || grc=$?
fi
if [[ -n $OBSERVER ]]; then
    # done a few seconds into the randread job, or never (no such job ran)
    for _ in $(seq 50); do kill -0 "$OBSERVER" 2>/dev/null || break; sleep 0.1; done
    kill "$OBSERVER" 2>/dev/null || true
    wait "$OBSERVER" 2>/dev/null || true
    OBSERVER=''
fi
socp_alive=1 stop_rc=0 restarts=0 hrestarts=0 status=''
# the serving runtime's status (its namespaces' copied bytes) before it stops
case $soc in
vm)
    status=$(soc_status)
    status=${status%%$'\n'*}
    ;;
process) status=$("$LEAPIOCTL_BIN" -s "$LEAPIO_RUN/socp-ctl.sock" status 2>/dev/null) || status='' ;;
*) status=$("$LEAPIOCTL_BIN" -s "$LEAPIO_RUN/demo-ctl.sock" status 2>/dev/null) || status='' ;;
esac
copied=$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(sum(n["copied_bytes"] or 0 for c in d["controllers"] for n in c["namespaces"]))' "$status" 2>/dev/null) || copied=''
if [[ $soc == vm ]]; then
    if [[ -n $RESTARTER ]]; then
        wait "$RESTARTER" || log "the restarter did not do all its restarts"
        RESTARTER=''
    fi
    restarts=$(split_restarts)
    kill -0 "$SOC_PID" 2>/dev/null || socp_alive=0
    soc_arch_v=$(soc_arch)
    stop_soc || stop_rc=1
    stop_split || stop_rc=1
elif [[ $soc == process ]]; then
    if [[ -n $RESTARTER ]]; then
        wait "$RESTARTER" || log "the restarter did not do all its restarts"
        RESTARTER=''
    fi
    restarts=$(split_restarts)
    hrestarts=$(cat "$logs/hostd-restarts" 2>/dev/null || echo 0)
    kill -0 "$(cat "$logs/socp.pid")" 2>/dev/null || socp_alive=0
    kill -0 "$(cat "$logs/hostd.pid")" 2>/dev/null || socp_alive=0
    stop_split || stop_rc=1
else
    kill -0 "$SOCP_PID" 2>/dev/null || socp_alive=0
    stop_socp || stop_rc=1
fi
kill "$BOOTW" 2>/dev/null || true
BOOTW=''
if [[ -n $TARGET_PID ]]; then
    stop_pid "NVMe/TCP target" "$TARGET_PID" || stop_rc=1
    TARGET_PID=''
fi
accel=$(sed -n 's/^accel=//p' "$glog.meta")
sets=(--set "soc=$soc" --set "storage=$storage" --set "socp_restarts=$restarts" --set "hostd_restarts=$hrestarts")
[[ -n $copied ]] && sets+=(--set "copied_bytes=$copied")
[[ $soc == vm ]] && sets+=(--set "soc_arch=${soc_arch_v:-unknown}")
if [[ -s $logs/boot-to-fio ]]; then
    sets+=(--set "boot_to_fio_s=$(cat "$logs/boot-to-fio")")
fi
if [[ -s $logs/restart-times ]]; then
    sets+=(--set "restart_to_attach_s=[$(paste -sd, "$logs/restart-times")]")
fi
if [[ -s $logs/hostd-restart-times ]]; then
    sets+=(--set "hostd_restart_to_attach_s=[$(paste -sd, "$logs/hostd-restart-times")]")
fi

# the virtual controller, as the guest's nvme-cli saw it
for b in nvme-list id-ctrl id-ns-1; do
    if text=$(guestlog block "$glog" info "$b"); then
        echo "---- guest: $(case $b in nvme-list) echo 'nvme list' ;; id-ctrl) echo 'nvme id-ctrl /dev/nvme0 (first lines)' ;; *) echo 'nvme id-ns /dev/nvme0n1 (first lines)' ;; esac) ----"
        case $b in
        nvme-list) echo "$text" ;;
        *) echo "$text" | head -n 16 ;;
        esac
    fi
done
if [[ -s $logs/top.txt ]]; then
    echo "---- leapioctl top during fio randread ----"
    cat "$logs/top.txt"
fi
for f in "$logs"/metrics-*.txt; do
    [[ -s $f ]] || continue
    echo "---- $(basename "$f" .txt) during fio randread (histogram buckets left out; the page: $f) ----"
    grep -v -e '^#' -e '_bucket{' "$f" || true
done
echo "---- summary ----"
guestlog summary "$glog" --accel "$accel" "${sets[@]}" || true
echo "  total      : $(elapsed "$t0") s (guest run $(sed -n 's/^wall_s=//p' "$glog.meta") s)"

why=''
case $grc in
0) ;;
124) why="guest timed out after ${timeout}s" ;;
1) why="a guest job failed: $(guestlog results "$glog" | grep -v ' ok' | tr '\n' ';')" ;;
*) why="guest did not finish (QEMU exit, see $glog.stderr)" ;;
esac
((socp_alive)) || why="${why:+$why; }socp died during the run"
if ((restart)) && [[ $restarts != 2 ]]; then
    why="${why:+$why; }socp was restarted $restarts times instead of 2"
fi
if ((restart_hostd)) && [[ $hrestarts != 2 ]]; then
    why="${why:+$why; }leapio-hostd was replaced $hrestarts times instead of 2 (an upgrade and a crash)"
fi
if [[ -n $why ]]; then
    guest_tail "$glog" 25
    socp_tail 25
    if ((json)); then
        guestlog summary "$glog" --json --accel "$accel" "${sets[@]}" \
            | "$PY" -c 'import json,sys; o=json.loads(sys.stdin.read() or "{}"); o["verify"]=sys.argv[1]; print(json.dumps(o,separators=(",",":")))' "$why"
    fi
    log "demo FAILED: $why"
    exit 1
fi
((stop_rc == 0)) || log "warning: socp (or leapio-hostd) did not stop cleanly on SIGTERM (see above)"
if ((json)); then
    guestlog summary "$glog" --json --accel "$accel" --wall "$(elapsed "$t0")" "${sets[@]}" || exit 1
else
    log "demo OK"
fi
