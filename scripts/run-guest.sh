#!/usr/bin/env bash
# Boot the LeapIO test guest once: QEMU (from the trixie root, chrooted) with
# guest RAM in a shared memfd, 2 vCPUs (--smp), no display or network, the serial
# console captured to a log file, the kernel + initramfs of vm-images/build.sh,
# and the guest jobs given with --job. Always under a hard timeout.
#
# usage: run-guest.sh [options]
#   --job A,B,...        guest jobs (probe info fio reset reboot bench), default probe
#   --disk SPEC          repeatable; the first disk decides the guest's device:
#        vfio-user:SOCK  our controller (socp) over vfio-user; SOCK as seen in
#                        the root (/run/leapio/vm0.sock) or its host path
#                        ($LEAPIO_ROOT/run/leapio/vm0.sock)
#        nvme:FILE       QEMU's emulated NVMe on FILE (cache=none, io_uring)
#        nvme-ns:FILE    one more namespace on the previous nvme: controller
#        nvme-zns:FILE   QEMU's emulated NVMe with a zoned namespace on FILE
#                        (1 MiB zones, 8 open / 8 active at most)
#        virtio:FILE     virtio-blk on FILE (cache=none, io_uring)
#                        FILE must live under $LEAPIO_ROOT (host or root path)
#   --append 'k=v ...'   extra kernel command line (leapio.runtime=10 ...)
#   --log FILE           serial console log (default $LEAPIO_CACHE/logs/...)
#   --timeout SEC        hard limit for the whole run (default 300)
#   --allow-reboot       let a guest reboot restart it (the `reboot` job)
#   --nic                QEMU user networking (virtio-net); the host's
#                        loopback is 10.0.2.2 from the guest (the `tcp` job)
#   --hostfwd RULE       repeatable, implies --nic: forward a host port into
#                        the guest, e.g. tcp:127.0.0.1:14420-:4420 (the
#                        guest is 10.0.2.15; the `nvmet` job)
#   --accel MODE         auto|kvm|tcg (default $LEAPIO_ACCEL or auto)
#   --smp N              vCPUs (default 2)
#   --image NAME         guest (default) or rdma (vm-images/build-rdma.sh:
#                        the generic kernel, soft-RoCE and the RDMA tools)
#   --iommu              an emulated Intel IOMMU with interrupt remapping
#                        (intel_iommu=on): devices can be driven through VFIO
#   --extra-initrd FILE  a cpio archive appended to the guest's initramfs
#                        (more programs for a job; FILE under $LEAPIO_ROOT)
#   --quiet              no progress messages
#
# Results: the serial log, QEMU's stderr in LOG.stderr, and LOG.meta with
# accel=, wall_s=, boot_to_fio_s= (host clock from QEMU start to the guest's
# first FIO-START marker), exit=. Exit status: 0 the guest ran every job and
# all passed; 1 a job failed; 3 QEMU failed or the guest stopped without
# finishing; 124 timeout (QEMU killed).
#
# Accelerator: auto boots a tiny `probe` job under KVM once (40 s limit) and
# uses KVM if it printed its marker, else TCG; the verdict is cached in
# $LEAPIO_CACHE/accel.verdict per host kernel + QEMU + guest kernel.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

jobs=probe disks=() append='' log='' timeout=300 allow_reboot=0 quiet=0 nic=0 fwd='' smp=2 iommu=0 extra='' image=guest
accel=${LEAPIO_ACCEL:-auto}
while (($#)); do
    case $1 in
    --job) jobs=$2; shift ;;
    --disk) disks+=("$2"); shift ;;
    --append) append=$2; shift ;;
    --log) log=$2; shift ;;
    --timeout) timeout=$2; shift ;;
    --allow-reboot) allow_reboot=1 ;;
    --nic) nic=1 ;;
    --hostfwd) nic=1 fwd+=",hostfwd=$2"; shift ;;
    --accel) accel=$2; shift ;;
    --smp) smp=$2; shift ;;
    --iommu) iommu=1 ;;
    --image) image=$2; shift ;;
    --extra-initrd) extra=$2; shift ;;
    --quiet) quiet=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "run-guest.sh: unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $smp =~ ^[1-9][0-9]*$ ]] || die "run-guest.sh: --smp wants a vCPU count, not '$smp'"
need_root
say() { ((quiet)) || log "$@"; }

env_file=$LEAPIO_DATA/images/$image.env
[[ -f $env_file ]] || die "no $image image: run vm-images/build.sh (or build-$image.sh) first"
KERNEL='' INITRD=''
# shellcheck disable=SC1090
. "$env_file"
[[ -f $LEAPIO_ROOT$KERNEL && -f $LEAPIO_ROOT$INITRD ]] || die "guest image files missing ($env_file): run vm-images/build.sh"

mkdir -p "$LEAPIO_CACHE/logs"
[[ -n $log ]] || log=$LEAPIO_CACHE/logs/$(date +%Y%m%d-%H%M%S)-${jobs//,/+}.log
mkdir -p "$(dirname "$log")"

# in_root PATH: PATH as QEMU sees it inside the root
in_root() {
    local p=$1
    if [[ $p == "$LEAPIO_ROOT"/* ]]; then
        p=${p#"$LEAPIO_ROOT"}
    fi
    echo "$p"
}

# ---- accelerator ----
kvm_node() { # make /dev/kvm exist inside the root (a static node, no mount)
    [[ -c /dev/kvm ]] || return 1
    if [[ ! -c $LEAPIO_ROOT/dev/kvm ]]; then
        local mm
        mm=$(stat -c '%t %T' /dev/kvm)
        # shellcheck disable=SC2086
        mknod -m 0660 "$LEAPIO_ROOT/dev/kvm" c $((0x${mm% *})) $((0x${mm#* }))
    fi
}

pick_accel() {
    local verdict_file=$LEAPIO_CACHE/accel.verdict key probe_log
    key="$(uname -r)|$(chroot "$LEAPIO_ROOT" qemu-system-x86_64 --version | head -1)|$KERNEL"
    if [[ -f $verdict_file ]] && [[ $(sed -n 1p "$verdict_file") == "$key" ]]; then
        sed -n 2p "$verdict_file"
        return
    fi
    local v=tcg
    if kvm_node; then
        log "probing KVM once (tiny guest, 40 s limit; the verdict is cached in $verdict_file)"
        probe_log=$LEAPIO_CACHE/logs/kvm-probe.log
        if bash "${BASH_SOURCE[0]}" --accel kvm --job probe --timeout 40 --log "$probe_log" --quiet >/dev/null 2>&1 \
            && grep -q '@@LEAPIO PROBE-OK' "$probe_log"; then
            v=kvm
        else
            log "KVM cannot boot the guest here (see $probe_log): using TCG"
        fi
    fi
    printf '%s\n%s\n' "$key" "$v" > "$verdict_file"
    echo "$v"
}

case $accel in
auto) accel=$(pick_accel) ;;
kvm) kvm_node || die "--accel kvm but /dev/kvm does not exist" ;;
tcg) ;;
*) die "accel must be auto, kvm or tcg (got $accel)" ;;
esac

# ---- QEMU command line ----
machine=q35,memory-backend=mem
initrd=$INITRD combined=''
if [[ -n $extra ]]; then
    # the image and the extra archive, one after the other (the kernel
    # unpacks every archive of its initramfs)
    combined=$LEAPIO_DATA/images/initrd-extra-$$.cpio
    # (an archive starts on a 4-byte boundary; zeroes between are skipped)
    {
        cat "$LEAPIO_ROOT$INITRD"
        head -c $(((4 - $(stat -c %s "$LEAPIO_ROOT$INITRD") % 4) % 4)) /dev/zero
        cat "$LEAPIO_ROOT$(in_root "$extra")"
    } > "$combined"
    initrd=$(in_root "$combined")
fi
# shellcheck disable=SC2054 # commas belong to QEMU options
args=(qemu-system-x86_64 -nodefaults -no-user-config -name leapio-guest
    -object memory-backend-memfd,id=mem,size=1G,share=on)
if ((iommu)); then
    machine+=,kernel-irqchip=split
    args+=(-device intel-iommu,intremap=on)
    append+=" intel_iommu=on"
fi
args+=(-machine "$machine" -m 1G -smp "$smp"
    -display none -monitor none
    -chardev stdio,id=con,signal=off -serial chardev:con
    -kernel "$KERNEL" -initrd "$initrd")
if [[ $accel == kvm ]]; then
    args+=(-accel kvm -cpu host)
else
    args+=(-accel tcg -cpu max)
fi
((allow_reboot)) || args+=(-no-reboot)
# shellcheck disable=SC2054 # commas belong to QEMU options
((nic)) && args+=(-nic "user,model=virtio-net-pci$fwd")

dev=/dev/nvme0n1
i=0
for d in "${disks[@]}"; do
    kind=${d%%:*} path=${d#*:}
    [[ $kind != "$d" && -n $path ]] || die "bad --disk $d (want vfio-user:SOCK, nvme:FILE or virtio:FILE)"
    rpath=$(in_root "$path")
    case $kind in
    vfio-user)
        [[ -S $LEAPIO_ROOT$rpath ]] || die "no vfio-user socket at $LEAPIO_ROOT$rpath (is socp running?)"
        args+=(-device "{\"driver\":\"vfio-user-pci\",\"id\":\"vfu$i\",\"socket\":{\"path\":\"$rpath\",\"type\":\"unix\"}}")
        ;;
    nvme | nvme-ns | nvme-zns | virtio)
        [[ -e $LEAPIO_ROOT$rpath ]] || die "disk file $LEAPIO_ROOT$rpath not found (it must live under $LEAPIO_ROOT)"
        args+=(-drive "file=$rpath,if=none,id=drv$i,format=raw,cache=none,aio=io_uring")
        if [[ $kind == nvme ]]; then
            last_nvme=nvme$i nsid=1
            args+=(-device "nvme,id=$last_nvme,serial=qemu-nvme-$i"
                -device "nvme-ns,drive=drv$i,bus=$last_nvme,nsid=$nsid")
        elif [[ $kind == nvme-zns ]]; then
            last_nvme=nvme$i nsid=1
            args+=(-device "nvme,id=$last_nvme,serial=qemu-zns-$i"
                -device "nvme-ns,drive=drv$i,bus=$last_nvme,nsid=$nsid,zoned=true,zoned.zone_size=1M,zoned.max_open=8,zoned.max_active=8")
        elif [[ $kind == nvme-ns ]]; then
            [[ -n ${last_nvme:-} ]] || die "--disk nvme-ns: needs an nvme: disk before it"
            nsid=$((nsid + 1))
            args+=(-device "nvme-ns,drive=drv$i,bus=$last_nvme,nsid=$nsid")
        else
            args+=(-device "virtio-blk-pci,drive=drv$i,num-queues=2")
            ((i)) || dev=/dev/vda
        fi
        ;;
    *) die "bad --disk kind $kind (vfio-user, nvme, nvme-ns, nvme-zns or virtio)" ;;
    esac
    i=$((i + 1))
done
args+=(-append "console=ttyS0 quiet panic=-1 leapio.job=$jobs leapio.dev=$dev $append")

# ---- run ----
: > "$log"
meta=$log.meta
: > "$meta"
qemu_pid='' watch_pid=''
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    # (each step may fail: set -e must not cut the cleanup short)
    if [[ -n $qemu_pid ]]; then kill -TERM "$qemu_pid" 2>/dev/null || true; fi
    if [[ -n $watch_pid ]]; then kill "$watch_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    if [[ -n $combined ]]; then rm -f "$combined"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "booting guest (accel=$accel, jobs=$jobs, disks=${disks[*]:-none}, timeout ${timeout}s), console: $log"
start=$(now)
timeout -k 5 "$timeout" chroot "$LEAPIO_ROOT" "${args[@]}" < /dev/null > "$log" 2> "$log.stderr" &
qemu_pid=$!

# host wall clock from QEMU start to the first fio start marker
(
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if grep -q '@@LEAPIO FIO-START' "$log" 2>/dev/null; then
            echo "boot_to_fio_s=$(elapsed "$start")" >> "$meta"
            exit 0
        fi
        sleep 0.1
    done
) &
watch_pid=$!

rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=''
wait "$watch_pid" 2>/dev/null || true
watch_pid=''
wall=$(elapsed "$start")

done_line=$(grep -a '@@LEAPIO DONE' "$log" | tail -1 | tr -d '\r' || true)
if ((rc == 124 || rc == 137)); then
    status=124
    say "TIMEOUT: guest did not finish within ${timeout}s, QEMU killed (accel=$accel); last console lines:"
    ((quiet)) || tail -n 15 "$log" | tr -d '\r' | sed 's/^/    | /' >&2
elif [[ -z $done_line ]]; then
    status=3
    say "guest stopped without finishing its jobs (QEMU exit $rc, accel=$accel); QEMU stderr and last console lines:"
    ((quiet)) || { sed 's/^/    ! /' "$log.stderr"; tail -n 15 "$log" | tr -d '\r' | sed 's/^/    | /'; } >&2
elif [[ $done_line == '@@LEAPIO DONE 0' ]]; then
    status=0
else
    status=1
fi
{
    echo "accel=$accel"
    echo "wall_s=$wall"
    echo "exit=$status"
} >> "$meta"
say "guest finished in ${wall}s (accel=$accel, exit $status)"
exit "$status"
