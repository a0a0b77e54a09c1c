#!/usr/bin/env bash
# End-to-end tests: each test starts socp, boots the stock-Linux guest against
# it over vfio-user and asserts on what the guest printed.
#
# usage: bash scripts/e2e.sh [--target socp|qemu] [TEST...]
#   tests: identify fio_verify reset reboot two_namespaces crypt_at_rest
#          raid0 split_restart soc_vm soc_vm_vfio soc_stress host_vfio ftl_fio_verify ftl_restart
#          zns_report zns_fio_zbd_verify zns_append zns_limits zns_restart
#          zns_tcp zns_split zns_crash_rerun ftl_zoned_device ftl_qemu_zns
#          hostd_upgrade hostd_crash multipath_failover raid1_leg_loss
#          raid1_restart
#   (ftl_*: a flash namespace, FTL on emulated NAND; zns_*: a zoned
#   namespace on emulated NAND; crypt_at_rest and raid0: storage services,
#   one guest boot for both; raid1_*: mirrors, one split boot for both;
#   socp only)
#   (default: all; split_restart and the SoC tests only with --target socp;
#   the SoC tests need the SoC tools of setup-host.sh and build the aarch64
#   socp and the SoC image, quick when cached)
#   --target qemu  run the same guest jobs against QEMU's emulated NVMe instead
#                  of socp (checks the harness itself; socp-specific checks
#                  are skipped)
#   LEAPIO_ACCEL=auto|kvm|tcg (default auto); LEAPIO_E2E_TIMEOUT per boot
#   (default 300 s).
# Prints one line per test, then exactly "N passed, M failed"; exits non-zero
# if any test failed. Logs: $LEAPIO_CACHE/logs/e2e/<test>.{guest,socp}.log
# Expects target/release/socp and the guest image (scripts/test.sh builds
# both; vm-images/build.sh is run here too, it is quick when cached).
# expect takes conditions in single quotes on purpose (evaluated later)
# shellcheck disable=SC2016
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

target=socp
tests=()
while (($#)); do
    case $1 in
    --target) target=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "e2e.sh: unknown option $1" ;;
    *) tests+=("$1") ;;
    esac
    shift
done
[[ $target == socp || $target == qemu ]] || die "--target must be socp or qemu"
if ((${#tests[@]} == 0)); then
    tests=(identify fio_verify reset reboot two_namespaces)
    [[ $target == socp ]] && tests+=(crypt_at_rest raid0 split_restart soc_vm soc_vm_vfio soc_stress host_vfio ftl_fio_verify ftl_restart
        zns_report zns_fio_zbd_verify zns_append zns_limits zns_restart zns_tcp
        zns_split zns_crash_rerun ftl_zoned_device ftl_qemu_zns hostd_upgrade hostd_crash
        multipath_failover raid1_leg_loss raid1_restart)
fi
need_root
cd "$LEAPIO_REPO"
boot_timeout=${LEAPIO_E2E_TIMEOUT:-300}

bash vm-images/build.sh >/dev/null || die "vm-images/build.sh failed"
[[ $target == qemu ]] || [[ -x $LEAPIO_BIN ]] || die "no $LEAPIO_BIN: run cargo build --release -p leapio first"
logs=$LEAPIO_CACHE/logs/e2e
mkdir -p "$logs"
disk=$LEAPIO_DATA/e2e-disk.img
disk_mib=1024
RESTARTER='' PERF_PID=''
e2e_cleanup() {
    # (each step may fail: set -e must not cut the cleanup short)
    if [[ -n $RESTARTER ]]; then kill "$RESTARTER" 2>/dev/null || true; fi
    if [[ -n $PERF_PID ]]; then kill "$PERF_PID" 2>/dev/null || true; fi
    mp_stop >/dev/null 2>&1 || true
    [[ ! -s $R1_DIR/target.pid ]] || kill -9 "$(cat "$R1_DIR/target.pid")" 2>/dev/null || true
    stop_guest
    stop_socp >/dev/null 2>&1 || true
    if [[ -n $SOC_PID ]]; then stop_soc >/dev/null 2>&1 || true; fi
    if [[ -n $HOSTD_PID ]]; then stop_split >/dev/null 2>&1 || true; fi
}
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers for the tests ----
REASON=''
GLOG=''
# boot NAME JOBS NSSPEC... [-- run-guest options]: start the target with the
# namespaces (file:PATH or ram:SIZE), boot the guest with JOBS; sets GLOG.
# Fails (sets REASON) when the target or the guest run fails.
boot() {
    local name=$1 jobs=$2 grc=0 ns
    shift 2
    local nss=() extra=()
    while (($#)); do
        if [[ $1 == -- ]]; then
            shift
            extra=("$@")
            break
        fi
        nss+=("$1")
        shift
    done
    GLOG=$logs/$name.guest.log
    local disks=()
    if [[ $target == socp ]]; then
        local spec="sock=$LEAPIO_RUN/e2e.sock"
        for ns in "${nss[@]}"; do spec+=",ns=$ns"; done
        if ! start_leapio "$logs/$name.socp.log" --ctrl "$spec"; then
            REASON="socp did not start (see $logs/$name.socp.log)"
            return 1
        fi
        disks=(--disk "vfio-user:$LEAPIO_RUN/e2e.sock")
    else
        local kind=nvme i=0
        for ns in "${nss[@]}"; do
            local f=${ns#file:}
            if [[ $ns == ram:* ]]; then
                f=$LEAPIO_DATA/e2e-ram$i.img
                rm -f "$f"
                truncate -s "${ns#ram:}" "$f"
            fi
            disks+=(--disk "$kind:$f")
            kind=nvme-ns
            i=$((i + 1))
        done
    fi
    run_guest --quiet --job "$jobs" "${disks[@]}" --log "$GLOG" \
        --timeout "$boot_timeout" "${extra[@]}" || grc=$?
    local alive=1 stopped=0
    if [[ $target == socp ]]; then
        kill -0 "$SOCP_PID" 2>/dev/null || alive=0
        stop_socp 2>>"$GLOG.harness" || stopped=$?
    fi
    case $grc in
    0) REASON='' ;;
    124) REASON="guest timed out after ${boot_timeout}s" ;;
    1) REASON="guest job failed: $(guestlog results "$GLOG" | grep -v ' ok' | head -3 | tr '\n' ';')" ;;
    *) REASON="guest did not finish (QEMU exit; $GLOG.stderr: $(head -c 300 "$GLOG.stderr" | tr '\n' ' '))" ;;
    esac
    if ((!alive)); then
        REASON="socp died during the test${REASON:+; $REASON}"
        return 1
    fi
    if ((stopped)); then
        REASON="${REASON:+$REASON; }socp did not stop cleanly on SIGTERM ($(tail -1 "$GLOG.harness"))"
        return 1
    fi
    [[ -z $REASON ]]
}

# expect COND MESSAGE: record a failed assertion
expect() {
    if ! eval "$1"; then
        REASON="${REASON:+$REASON; }$2"
        return 1
    fi
}
info_field() { guestlog info "$GLOG" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
fresh_disk() { rm -f "$disk"; truncate -s "${disk_mib}M" "$disk"; }
# guest_health: "FIO-ERRORS KERNEL-IO-ERRORS KERNEL-NVME-RESETS" of $GLOG
guest_health() {
    local errs
    errs=$(guestlog fio "$GLOG" | "$PY" -c 'import json,sys; print(sum(json.loads(l)["errors"] or 0 for l in sys.stdin))')
    guestlog kernel "$GLOG" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], d["guest_io_errors"], d["guest_nvme_resets"])' "$errs"
}

# expect_clean_split GRC STOPPED: what every split test under faults
# checks at its end: the guest run (status GRC) succeeded, fio saw no error,
# the guest kernel logged no I/O error and no nvme timeout or reset, socp
# and leapio-hostd stopped cleanly (STOPPED 0). Non-zero if one failed.
expect_clean_split() {
    local grc=$1 stopped=$2 ok=0 errs ioerr resets
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $grc == 0 ]]' "guest run failed (status $grc): $(guestlog results "$GLOG" | grep -v ' ok' | head -2 | tr '\n' ';')" || ok=1
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || ok=1
    expect '((stopped == 0))' "socp or leapio-hostd did not stop cleanly (or an fd keeper lingered)" || ok=1
    return $ok
}

# ---- the tests ----
test_identify() {
    fresh_disk
    boot identify info "file:$disk" || return 1
    local model nns size lba hwq vid
    model=$(info_field 'd["model"]') nns=$(info_field 'len(d["namespaces"])')
    size=$(info_field 'd["namespaces"][0]["size_bytes"] if d["namespaces"] else 0')
    lba=$(info_field 'd["namespaces"][0]["lba_bytes"] if d["namespaces"] else 0')
    hwq=$(info_field 'd["hw_queues"]') vid=$(info_field 'd["vid"]')
    local ok=0
    expect '[[ -n $model ]]' "id-ctrl shows no model number" || ok=1
    if [[ $target == socp ]]; then
        expect '[[ $vid != 6966 && $model != "QEMU NVMe Ctrl" ]]' "id-ctrl shows QEMU's controller, not ours (vid $vid, model $model)" || ok=1
    fi
    expect '[[ $nns == 1 ]]' "expected 1 namespace, guest sees $nns" || ok=1
    expect '[[ $size == $((disk_mib << 20)) ]]' "namespace 1 is $size bytes, backing file is $((disk_mib << 20))" || ok=1
    expect '[[ $lba == 512 || $lba == 4096 ]]' "odd LBA size $lba" || ok=1
    expect '[[ $hwq == 2 ]]' "guest uses $hwq I/O queues, expected 2 (one per vCPU)" || ok=1
    ((ok == 0)) && DETAIL="model '$model', 1 ns of $((size >> 20)) MiB, ${lba}-byte LBAs, $hwq I/O queues"
    return $ok
}

test_fio_verify() {
    fresh_disk
    boot fio_verify fio "file:$disk" -- --append "leapio.runtime=3 leapio.size=32" || return 1
    local q errs used
    q=$(guestlog queues "$GLOG")
    errs=$(guestlog fio "$GLOG" | "$PY" -c 'import json,sys; print(sum(json.loads(l)["errors"] or 0 for l in sys.stdin))')
    used=$(echo "$q" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for v in d.values() if v > 0))')
    local ok=0
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect '[[ $used -ge 2 ]]' "only $used I/O queue(s) completed I/O during the verified write (interrupt deltas $q)" || ok=1
    ((ok == 0)) && DETAIL="write+verify, verify_only and randread clean; queue interrupts $q"
    return $ok
}

test_reset() {
    fresh_disk
    boot reset reset "file:$disk" -- --append "leapio.size=32" || return 1
    grep -aq '@@LEAPIO RESET-DONE state=live' "$GLOG" || { REASON="no RESET-DONE marker"; return 1; }
    DETAIL="I/O, nvme reset, controller live again, old data verified, new I/O verified"
}

test_reboot() {
    fresh_disk
    local nonce
    nonce=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    boot reboot reboot "file:$disk" -- --allow-reboot --append "leapio.nonce=$nonce leapio.size=32" || return 1
    local boots
    boots=$(grep -ac '@@LEAPIO BOOT' "$GLOG")
    expect '[[ $boots == 2 ]]' "guest booted $boots times, expected 2" || return 1
    expect "grep -aq '@@LEAPIO REBOOT-SECOND-BOOT $nonce' '$GLOG'" "second boot did not find the magic block" || return 1
    DETAIL="wrote data, reboot -f, controller came back after the reset, data verified"
}

test_two_namespaces() {
    fresh_disk
    boot two_namespaces info ram:256M "file:$disk" -- --append "leapio.nscount=2" || return 1
    local nns s1 s2
    nns=$(info_field 'len(d["namespaces"])')
    s1=$(info_field 'd["namespaces"][0]["size_bytes"] if len(d["namespaces"]) > 0 else 0')
    s2=$(info_field 'd["namespaces"][1]["size_bytes"] if len(d["namespaces"]) > 1 else 0')
    local ok=0
    expect '[[ $nns == 2 ]]' "guest sees $nns namespaces, expected 2" || ok=1
    expect '[[ $s1 == $((256 << 20)) ]]' "namespace 1 (ram:256M) is $s1 bytes" || ok=1
    expect '[[ $s2 == $((disk_mib << 20)) ]]' "namespace 2 (file) is $s2 bytes" || ok=1
    ((ok == 0)) && DETAIL="nsid 1 ram 256 MiB, nsid 2 file $disk_mib MiB, both visible in nvme list"
    return $ok
}

# ---- storage services: one guest boot serves the two tests below ----
# nsid 1 is crypt:(file:...)?key=... over a fresh sparse file with a fresh
# 64-byte random key (XTS-AES-256), nsid 2 raid0 over two fresh files with
# 64 KiB strips. The guest writes a known plaintext (the `mark` job) into
# nsid 1, runs verified fio on each namespace, then finds its plaintext
# again through nsid 1; the runtime is stopped after it.
svc_crypt=$LEAPIO_DATA/e2e-crypt.img
svc_key=$LEAPIO_DATA/e2e-crypt.key
svc_a=$LEAPIO_DATA/e2e-raid0-a.img
svc_b=$LEAPIO_DATA/e2e-raid0-b.img
SVC_STATE='' SVC_MARK=''
services_boot() {
    case $SVC_STATE in
    ok) GLOG=$logs/services.guest.log; return 0 ;;
    ?*) REASON=$SVC_STATE; return 1 ;;
    esac
    rm -f "$svc_crypt" "$svc_key" "$svc_a" "$svc_b" "$logs"/services.*
    truncate -s 256M "$svc_crypt"
    truncate -s 128M "$svc_a" "$svc_b"
    head -c 64 /dev/urandom > "$svc_key"
    SVC_MARK=LEAPIO-PLAINTEXT-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    if boot services mark@1,fio@1,fio@2,mark@1 "crypt:(file:$svc_crypt)?key=$svc_key" \
        "raid0:(file:$svc_a|file:$svc_b)?strip=64K" \
        -- --append "leapio.nscount=2 leapio.runtime=1 leapio.size=16 leapio.mark=$SVC_MARK"; then
        SVC_STATE=ok
        return 0
    fi
    SVC_STATE="the services guest run failed: $REASON"
    REASON=$SVC_STATE
    return 1
}

# plain_scan FILE...: one line per file, "NONZERO-BYTES FIO-HEADERS": how
# many of its bytes are not zero, and how many of its 4 KiB blocks begin as
# the header of fio's verify blocks does (magic 0xacca, a length of 512 B to
# 1 MiB): the data fio wrote, in plaintext.
plain_scan() {
    "$PY" - "$@" << 'PY'
import struct, sys
for path in sys.argv[1:]:
    nz = hdr = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            nz += len(b) - b.count(0)
            for i in range(0, len(b) - 8, 4096):
                if b[i] == 0xCA and b[i + 1] == 0xAC:
                    n = struct.unpack_from("<I", b, i + 4)[0]
                    hdr += 512 <= n <= 1 << 20 and n % 512 == 0
    print(nz, hdr)
PY
}

# Encryption at rest: verified fio through the encrypted namespace; the
# child file holds neither the guest's marker nor a block that begins as
# fio's verify header does, though the guest read its marker back after
# fio; a start with a wrong key fails, naming the key check value, and
# leaves the child alone; the right key still opens it.
test_crypt_at_rest() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    services_boot || return 1
    local ok=0 errs ioerr resets nz hdr marks wrc=0 h0 h1 iops
    local wrong=$logs/crypt_at_rest.wrong.key wlog=$logs/crypt_at_rest.wrong-key.log
    read -r errs ioerr resets <<< "$(guest_health)"
    read -r nz hdr <<< "$(plain_scan "$svc_crypt")"
    marks=$(grep -acF "$SVC_MARK" "$svc_crypt" || true)
    iops=$(guestlog fio "$GLOG" fio@1 | "$PY" -c 'import json,sys; print(" ".join("%s %.0f" % (d["name"], d["iops"]) for d in map(json.loads, sys.stdin)))')
    expect '[[ $errs == 0 && $ioerr == 0 && $resets == 0 ]]' "fio errors $errs, guest I/O errors $ioerr, nvme resets/timeouts $resets" || ok=1
    expect "grep -aq '@@LEAPIO MARK-WRITTEN $SVC_MARK' '$GLOG' && grep -aq '@@LEAPIO MARK-FOUND $SVC_MARK' '$GLOG'" \
        "the guest did not write its marker and read it back after fio" || ok=1
    expect '[[ $marks == 0 ]]' "the child file holds the guest's plaintext marker ($marks lines)" || ok=1
    expect '[[ $hdr == 0 ]]' "$hdr blocks of the child file begin as fio's verify header does: plaintext" || ok=1
    expect '((nz > 24 << 20))' "the child file holds only $nz non-zero bytes: fio's 32 MiB did not reach it" || ok=1
    # a wrong key: refused at start, the child untouched
    head -c 64 /dev/urandom > "$wrong"
    h0=$(head -c 4096 "$svc_crypt" | sha256sum)
    NO_COLOR=1 timeout 60 "$LEAPIO_BIN" --ctrl "sock=$LEAPIO_RUN/e2e.sock,ns=crypt:(file:$svc_crypt)?key=$wrong" \
        > /dev/null 2> "$wlog" || wrc=$?
    h1=$(head -c 4096 "$svc_crypt" | sha256sum)
    [[ $h0 == "$h1" ]] || h1=changed
    expect '((wrc != 0 && wrc != 124))' "leapio started with a wrong key (exit status $wrc)" || ok=1
    expect "grep -q 'does not open' '$wlog' && grep -q 'key check value' '$wlog'" \
        "leapio's refusal does not name the key check value: $(tail -2 "$wlog" | tr '\n' ' ')" || ok=1
    expect '[[ $h1 != changed ]]' "the start with a wrong key changed the child's header" || ok=1
    expect "! grep -qiF '$(od -An -tx1 "$wrong" | tr -d ' \n')' '$wlog'" "leapio printed the key" || ok=1
    if start_leapio "$logs/crypt_at_rest.reopen.log" --ctrl "sock=$LEAPIO_RUN/e2e.sock,ns=crypt:(file:$svc_crypt)?key=$svc_key"; then
        stop_socp >/dev/null 2>&1 || true
    else
        expect false "the right key no longer opens the child (see $logs/crypt_at_rest.reopen.log)" || ok=1
    fi
    rm -f "$wrong"
    ((ok == 0)) && DETAIL="XTS-AES-256 over a file: marker written and read back, fio verified ($iops IOPS); child: $((nz >> 20)) MiB of ciphertext, marker 0 times, fio headers 0; wrong key refused at start (exit $wrc: $(grep -o 'does not open.*' "$wlog" | head -1 | sed 's/.*(\(.*\))/\1/'))"
    return $ok
}

# RAID-0 over two files (64 KiB strips): verified fio through it in the
# same guest as crypt_at_rest; both children then hold plaintext fio data.
test_raid0() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    services_boot || return 1
    local ok=0 errs ioerr resets nza ha nzb hb iops
    read -r errs ioerr resets <<< "$(guest_health)"
    { read -r nza ha; read -r nzb hb; } <<< "$(plain_scan "$svc_a" "$svc_b")"
    iops=$(guestlog fio "$GLOG" fio@2 | "$PY" -c 'import json,sys; print(" ".join("%s %.0f" % (d["name"], d["iops"]) for d in map(json.loads, sys.stdin)))')
    expect '[[ $errs == 0 && $ioerr == 0 && $resets == 0 ]]' "fio errors $errs, guest I/O errors $ioerr, nvme resets/timeouts $resets" || ok=1
    expect "grep -aq '@@LEAPIO RESULT fio@2 ok' '$GLOG'" "fio on the raid0 namespace did not pass" || ok=1
    expect '((nza > 8 << 20 && nzb > 8 << 20))' "the children hold $nza and $nzb non-zero bytes: fio's 32 MiB did not reach both" || ok=1
    expect '((ha > 0 && hb > 0))' "fio's verify headers on the children: $ha and $hb (expected some on each)" || ok=1
    ((ok == 0)) && DETAIL="2 files, 64 KiB strips: fio verified ($iops IOPS); child A $((nza >> 20)) MiB written ($ha fio blocks), child B $((nzb >> 20)) MiB ($hb)"
    return $ok
}

# ---- RAID-1: one split boot serves raid1_leg_loss and raid1_restart ----
# leapio-hostd + socp serve two mirrors (256 KiB regions): nsid 1 mirrors a
# local file and the namespace of another socp, an NVMe/TCP target on
# loopback with a file of its own; nsid 2 mirrors two local files. The
# guest runs verified fio on nsid 1, then on nsid 2, its writes throttled
# (leapio.wrate) so that r1_actor acts during them: on nsid 1 it kills the
# target (SIGKILL), starts it again and re-adds the leg; on nsid 2 it fails
# child 1, re-adds it with the resync slowed to 1 MB/s, and kills socp
# (SIGKILL) midway through the resync, then starts another. Its record of
# what it did and saw: $R1_DIR/actions.
r1_local=$LEAPIO_DATA/e2e-r1-local.img
r1_remote=$LEAPIO_DATA/e2e-r1-remote.img
r1_c=$LEAPIO_DATA/e2e-r1-c.img
r1_d=$LEAPIO_DATA/e2e-r1-d.img
R1_DIR=$logs/raid1.d
R1_STATE='' R1_GRC=0 R1_STOPPED=0
r1_port=${LEAPIO_R1_PORT:-4443}
r1_nqn=nqn.2026-12.io.leapio:r1leg
# r1_target LOG: the remote leg's NVMe/TCP target, listening; its pid in
# $R1_DIR/target.pid (the actor, a subshell, starts the second one)
r1_target() {
    local pid
    NO_COLOR=1 RUST_LOG=info "$SOCP_BIN" \
        --tcp-target "listen=127.0.0.1:$r1_port,nqn=$r1_nqn,ns=file:$r1_remote" 2> "$1" &
    pid=$!
    # killed on purpose: no job report for it
    disown "$pid"
    echo "$pid" > "$R1_DIR/target.pid"
    mp_listening "$1" "$pid"
}
r1_target_pid() { cat "$R1_DIR/target.pid" 2>/dev/null; }
# r1_svc NSID [ACTION ARG...]: leapioctl service on the split's socp
r1_svc() { "$LEAPIOCTL_BIN" -s "$LEAPIO_RUN/socp-ctl.sock" service e2e "$@"; }
# r1_field NSID EXPR: EXPR over d, the state of mirror NSID
r1_field() {
    r1_svc "$1" 2>/dev/null | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))' "$2"
}
# r1_in_sync NSID [SECONDS]: wait (default 60 s) until every child of the
# mirror is in sync
r1_synced() { [[ $(r1_field "$1" 'all(c["state"] == "in-sync" for c in d["children"])') == True ]]; }
r1_in_sync() { wait_until "${2:-60}" '' r1_synced "$1"; }
# nsid 1: the remote leg dies during the write phase and comes back
r1_leg_actor() {
    local glog=$1 a=$R1_DIR/actions i b0 b1
    wait_log "$glog" "FIO-START fio@1 write" "$boot_timeout" || { echo "fio@1 never started" >> "$a"; return 1; }
    sleep 1.5
    kill_gone "$(r1_target_pid)"
    echo "target killed" >> "$a"
    sleep 2.5
    echo "leg state while the target was down: $(r1_field 1 'd["children"][1]["state"]')" >> "$a"
    r1_target "$R1_DIR/target2.log" || { echo "the target did not listen again" >> "$a"; return 1; }
    b0=$(r1_field 1 'd["resync"]["bytes"]')
    # refused (the leg's claim fails) until the leg reaches its target again
    i=0
    until r1_svc 1 readd 1 > "$R1_DIR/readd1" 2>&1; do
        ((i < 150)) || { echo "readd refused: $(cat "$R1_DIR/readd1")" >> "$a"; return 1; }
        sleep 0.2
        i=$((i + 1))
    done
    echo "leg re-added after $i refusals: $(tr -d '\n' < "$R1_DIR/readd1")" >> "$a"
    r1_in_sync 1 || { echo "the leg never came back in sync" >> "$a"; return 1; }
    b1=$(r1_field 1 'd["resync"]["bytes"]')
    echo "leg in sync copied=$((b1 - b0))" >> "$a"
}
# nsid 2: socp dies during a resync
r1_restart_actor() {
    local glog=$1 a=$R1_DIR/actions left attached t0
    wait_log "$glog" "FIO-START fio@2 write" "$boot_timeout" || { echo "fio@2 never started" >> "$a"; return 1; }
    sleep 1
    r1_svc 2 fail 1 >> "$a" 2>&1 || return 1
    sleep 3
    r1_svc 2 rate 1 >> "$a" 2>&1 || return 1
    r1_svc 2 readd 1 >> "$a" 2>&1 || return 1
    sleep 1
    left=$(r1_field 2 'd["resync"]["remaining_bytes"] if d["children"][1]["state"] == "rebuilding" else 0')
    attached=$(grep -ac 'runtime attached' "$SPLIT_DIR/hostd.log")
    kill_gone "$(cat "$SPLIT_DIR/socp.pid")"
    echo "socp killed mid-resync left=$left" >> "$a"
    t0=$(now)
    spawn_split_socp "$SPLIT_DIR/socp-r1.log"
    attached_since "$attached"
    r1_in_sync 2 || { echo "nsid 2 never came back in sync" >> "$a"; return 1; }
    echo "resync done after the restart secs=$(elapsed "$t0")" >> "$a"
}
# both, each whatever the other did
r1_actor() {
    local rc=0
    r1_leg_actor "$1" || rc=1
    r1_restart_actor "$1" || rc=1
    return $rc
}
raid1_boot() {
    case $R1_STATE in
    ok) GLOG=$logs/raid1.guest.log; return 0 ;;
    ?*) REASON=$R1_STATE; return 1 ;;
    esac
    GLOG=$logs/raid1.guest.log
    rm -rf "$R1_DIR" "$GLOG" "$r1_local" "$r1_remote" "$r1_c" "$r1_d"
    mkdir -p "$R1_DIR"
    truncate -s 64M "$r1_local" "$r1_remote" "$r1_c" "$r1_d"
    if ! r1_target "$R1_DIR/target1.log"; then
        R1_STATE="the NVMe/TCP target of the remote leg did not listen (see $R1_DIR/target1.log)"
        REASON=$R1_STATE
        return 1
    fi
    local leg="nvme-tcp:127.0.0.1:$r1_port/$r1_nqn?retry=500&kato=2000"
    if ! start_split "$R1_DIR" e2e "$LEAPIO_RUN/e2e.sock" \
        "raid1:(file:$r1_local|$leg)?bitmap=$R1_DIR/ns1.bitmap&region=256K" \
        "raid1:(file:$r1_c|file:$r1_d)?bitmap=$R1_DIR/ns2.bitmap&region=256K"; then
        kill_gone "$(r1_target_pid)"
        R1_STATE="leapio-hostd + socp did not start (see $R1_DIR)"
        REASON=$R1_STATE
        return 1
    fi
    # the new mirrors' first copy, before the guest writes
    if ! { r1_in_sync 1 && r1_in_sync 2; }; then
        R1_STATE="the new mirrors did not get in sync (see $R1_DIR)"
        REASON=$R1_STATE
        stop_split >/dev/null 2>&1 || true
        kill_gone "$(r1_target_pid)"
        return 1
    fi
    r1_actor "$GLOG" &
    RESTARTER=$!
    run_guest --quiet --job fio@1,fio@2 --disk "vfio-user:$LEAPIO_RUN/e2e.sock" --log "$GLOG" \
        --timeout "$boot_timeout" --append "leapio.nscount=2 leapio.runtime=1 leapio.size=16 leapio.wrate=2048" || R1_GRC=$?
    wait "$RESTARTER" || echo "actor failed" >> "$R1_DIR/actions"
    RESTARTER=''
    r1_in_sync 1 10 && r1_in_sync 2 10 || echo "not in sync at the end" >> "$R1_DIR/actions"
    stop_split 2>>"$GLOG.harness" || R1_STOPPED=1
    stop_pid "NVMe/TCP target" "$(r1_target_pid)" 2>>"$GLOG.harness" || R1_STOPPED=1
    rm -f "$R1_DIR/target.pid"
    R1_STATE=ok
}

# A mirror of a local file and a remote NVMe/TCP namespace: the remote
# target killed during the guest's verified writes and started again, the
# leg re-added: no guest error, only the regions written meanwhile copied,
# and at the end the two children are byte for byte the same.
test_raid1_leg_loss() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    raid1_boot || return 1
    local a=$R1_DIR/actions ok=0 errs ioerr resets copied marked refused same=no
    read -r errs ioerr resets <<< "$(guest_health)"
    copied=$(sed -n 's/^leg in sync copied=//p' "$a")
    marked=$(sed -n 's/.*rebuilding from \([0-9]*\) marked regions.*/\1/p' "$a" | head -1)
    refused=$(sed -n 's/^leg re-added after \([0-9]*\) refusals.*/\1/p' "$a")
    cmp -s "$r1_local" "$r1_remote" && same=yes
    expect "grep -aq '@@LEAPIO RESULT fio@1 ok' '$GLOG'" "fio on the mirror with the remote leg did not pass" || ok=1
    expect '[[ $errs == 0 && $ioerr == 0 && $resets == 0 ]]' "fio errors $errs, guest I/O errors $ioerr, nvme resets/timeouts $resets" || ok=1
    expect "grep -q 'target killed' '$a' && grep -q 'leg state while the target was down: failed' '$a'" \
        "the leg was not seen failed after the target's death: $(tr '\n' ';' < "$a")" || ok=1
    expect '[[ -n $copied ]]' "the leg never came back in sync: $(tr '\n' ';' < "$a")" || ok=1
    expect '((${copied:-0} > 0 && ${copied:-0} < 64 << 20))' "the returning leg got ${copied:-?} bytes: expected the written regions only (0 < copied < 64 MiB)" || ok=1
    expect '[[ $same == yes ]]' "the two children differ after the resync" || ok=1
    expect '((R1_STOPPED == 0))' "socp, leapio-hostd or the target did not stop cleanly" || ok=1
    ((ok == 0)) && DETAIL="remote leg's target killed during verified fio, restarted, leg re-added (refused ${refused:-?} times until it reached the target again): ${marked:-?} regions of 256 KiB marked, $((copied >> 10)) KiB copied of 64 MiB; children identical, fio clean, guest kernel quiet"
    return $ok
}

# The same boot's second mirror (split deployment): socp killed with SIGKILL
# while it resyncs a child; the next socp resumes the resync from the
# bitmap, the children end identical, fio verifies, the guest sees nothing.
test_raid1_restart() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    raid1_boot || return 1
    local a=$R1_DIR/actions ok=0 left secs same=no
    left=$(sed -n 's/^socp killed mid-resync left=//p' "$a")
    secs=$(sed -n 's/^resync done after the restart secs=//p' "$a")
    cmp -s "$r1_c" "$r1_d" && same=yes
    expect_clean_split "$R1_GRC" "$R1_STOPPED" || ok=1
    expect "grep -aq '@@LEAPIO RESULT fio@2 ok' '$GLOG'" "fio on the mirror of two files did not pass" || ok=1
    expect '((${left:-0} > 0))' "socp was not killed during a resync (bytes left: ${left:-none}): $(tr '\n' ';' < "$a")" || ok=1
    expect '[[ -n $secs ]]' "the resync did not complete after the restart: $(tr '\n' ';' < "$a")" || ok=1
    expect "grep -q 'raid1: child in sync' '$R1_DIR/socp-r1.log'" "the restarted socp never logged the child in sync" || ok=1
    expect '[[ $same == yes ]]' "the two children differ after the resync" || ok=1
    ((ok == 0)) && DETAIL="socp killed (SIGKILL) with $((left >> 10)) KiB of the resync left; the next one resumed it from the bitmap, in sync ${secs}s after its start; children identical, fio clean, guest kernel quiet"
    return $ok
}

# The LeapIO split: leapio-hostd owns the VM's device, socp serves its I/O
# from another process and is killed -9 twice during the guest's verified
# fio (write phase, randread phase); the guest must not notice.
test_split_restart() {
    fresh_disk
    local dir=$logs/split_restart.d grc=0
    GLOG=$logs/split_restart.guest.log
    rm -rf "$dir"
    if ! start_split "$dir" e2e "$LEAPIO_RUN/e2e.sock" "file:$disk"; then
        REASON="leapio-hostd + socp did not start (see $dir)"
        return 1
    fi
    SOCP_LOG=$dir/socp.log
    rm -f "$GLOG"
    socp_restarter "$GLOG" "$boot_timeout" "FIO-START fio write 1.5" "FIO-START fio randread 2" &
    RESTARTER=$!
    run_guest --quiet --job fio --disk "vfio-user:$LEAPIO_RUN/e2e.sock" --log "$GLOG" \
        --timeout "$boot_timeout" --append "leapio.runtime=4 leapio.size=32" || grc=$?
    wait "$RESTARTER" || true
    RESTARTER=''
    local restarts alive=1 stopped=0
    restarts=$(split_restarts)
    kill -0 "$(cat "$dir/socp.pid")" 2>/dev/null || alive=0
    stop_split 2>>"$GLOG.harness" || stopped=1
    local ok=0 times
    times=$(paste -sd, "$dir/restart-times" 2>/dev/null)
    expect_clean_split "$grc" "$stopped" || ok=1
    expect '[[ $restarts == 2 ]]' "socp was restarted $restarts times, expected 2" || ok=1
    expect '((alive))' "the last socp died" || ok=1
    ((ok == 0)) && DETAIL="2 x kill -9 of socp during verified fio, new runtime attached after ${times} s; fio clean, guest kernel quiet"
    return $ok
}

# Two paths to one subsystem, as a multipath host sees them: socp A serves
# the disk on port PA; socp B serves A's namespace again on port PB through
# its own NVMe/TCP host (a second listener, both reporting ANA). The guest's
# namespace is multipath over both. During fio's verified write, B's listener
# turns inaccessible (an ANA change: the I/O moves to A) and back; during
# the randread, B is killed. The guest sees no error.
MP_A='' MP_B=''
mp_stop() {
    [[ -z $MP_B ]] || kill -9 "$MP_B" 2>/dev/null || true
    local rc=0
    [[ -z $MP_A ]] || stop_pid "NVMe/TCP target A" "$MP_A" || rc=1
    MP_A='' MP_B=''
    return $rc
}
mp_listening() { # LOG PID
    local i=0
    until grep -q 'NVMe/TCP target listening' "$1"; do
        ((i < 300)) && kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
        i=$((i + 1))
    done
}
test_multipath_failover() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    local pa=${LEAPIO_MP_PORT_A:-4441} pb=${LEAPIO_MP_PORT_B:-4442}
    local nqn=nqn.2026-12.io.leapio:mp0 ctlb=$LEAPIO_RUN/e2e-mp-b.sock
    local acts=$logs/multipath_failover.actions.log ok=0
    fresh_disk
    rm -f "$acts" "$logs/multipath_failover.guest.log"
    NO_COLOR=1 RUST_LOG=info "$SOCP_BIN" \
        --tcp-target "listen=127.0.0.1:$pa,nqn=$nqn,ns=file:$disk,ana=optimized" \
        2> "$logs/multipath_failover.a.log" &
    MP_A=$!
    mp_listening "$logs/multipath_failover.a.log" "$MP_A" || { REASON="target A did not listen"; mp_stop; return 1; }
    NO_COLOR=1 RUST_LOG=info "$SOCP_BIN" --control "$ctlb" \
        --tcp-target "listen=127.0.0.1:$pb,nqn=$nqn,ns=nvme-tcp:127.0.0.1:$pa/$nqn?retry=500,ana=optimized" \
        2> "$logs/multipath_failover.b.log" &
    MP_B=$!
    # killed on purpose below: no job report for it
    disown "$MP_B"
    mp_listening "$logs/multipath_failover.b.log" "$MP_B" || { REASON="target B did not listen"; mp_stop; return 1; }
    {
        wait_log "$logs/multipath_failover.guest.log" "FIO-START fio write" "$boot_timeout" || exit 0
        sleep 1
        "$LEAPIOCTL_BIN" -s "$ctlb" ana "$nqn" inaccessible >> "$acts" 2>&1 && echo "B inaccessible" >> "$acts"
        sleep 2
        "$LEAPIOCTL_BIN" -s "$ctlb" ana "$nqn" optimized >> "$acts" 2>&1 && echo "B optimized" >> "$acts"
        wait_log "$logs/multipath_failover.guest.log" "FIO-START fio randread" "$boot_timeout" || exit 0
        sleep 1
        kill -9 "$MP_B" && echo "B killed" >> "$acts"
    } &
    RESTARTER=$!
    local paths="nvme-tcp:127.0.0.1:$pa/$nqn?retry=500&kato=2000|nvme-tcp:127.0.0.1:$pb/$nqn?retry=500&kato=2000"
    boot multipath_failover fio "multipath:($paths)?policy=qd" -- --append "leapio.runtime=4 leapio.size=32" || ok=1
    wait "$RESTARTER" || true
    RESTARTER=''
    local errs ioerr resets moved
    read -r errs ioerr resets <<< "$(guest_health)"
    mp_stop || { REASON="${REASON:+$REASON; }target A did not stop cleanly"; ok=1; }
    moved=$(grep -c 'multipath: path' "$logs/multipath_failover.socp.log" || true)
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || ok=1
    expect 'grep -q "B inaccessible" "$acts" && grep -q "B optimized" "$acts" && grep -q "B killed" "$acts"' \
        "not every path event happened: $(tr '\n' ';' < "$acts" 2>/dev/null)" || ok=1
    expect 'grep -q "ANA state of the namespace" "$logs/multipath_failover.socp.log"' "the runtime never read an ANA state" || ok=1
    expect '((moved > 0))' "no request moved to another path" || ok=1
    ((ok == 0)) && DETAIL="ANA change then kill -9 of one of two listeners during verified fio; fio clean, guest kernel quiet; $moved path failovers logged"
    return $ok
}

# hostd_replaced MODE: verified fio on the split while leapio-hostd (with
# an fd keeper) is replaced 5 times: MODE upgrade (a new one with
# --handover takes over from the running one) or crash (kill -9, then a
# new one). QEMU's vfio-user connection must never close: the guest sees
# no error, no nvme timeout or reset.
hostd_replaced() {
    local mode=$1 dir=$logs/hostd_$1.d grc=0 n times clients ok=0 stopped=0 maxlat
    fresh_disk
    GLOG=$logs/hostd_$mode.guest.log
    rm -rf "$dir"
    HOSTD_KEEP=$LEAPIO_RUN/hostd-keeper.sock
    if ! start_split "$dir" e2e "$LEAPIO_RUN/e2e.sock" "file:$disk"; then
        HOSTD_KEEP=''
        REASON="leapio-hostd --keep + socp did not start (see $dir)"
        return 1
    fi
    rm -f "$GLOG"
    hostd_restarter "$mode" "$GLOG" "$boot_timeout" "FIO-START fio write 0.3" "FIO-START fio write 0.4" \
        "FIO-START fio randread 0.5" "FIO-START fio randread 1" "FIO-START fio randread 1" &
    RESTARTER=$!
    run_guest --quiet --job fio --disk "vfio-user:$LEAPIO_RUN/e2e.sock" --log "$GLOG" \
        --timeout "$boot_timeout" --append "leapio.runtime=6 leapio.size=32" || grc=$?
    wait "$RESTARTER" || true
    RESTARTER=''
    n=$(cat "$dir/hostd-restarts" 2>/dev/null || echo 0)
    times=$(paste -sd, "$dir/hostd-restart-times" 2>/dev/null)
    clients=$(grep -ac 'vfio-user client connected' "$dir/hostd.log" || true)
    stop_split 2>>"$GLOG.harness" || stopped=1
    HOSTD_KEEP=''
    maxlat=$(guestlog fio "$GLOG" | "$PY" -c 'import json,sys; print(round(max(json.loads(l).get("clat_max_us") or 0 for l in sys.stdin)/1000))' 2>/dev/null || echo '?')
    expect_clean_split "$grc" "$stopped" || ok=1
    expect '[[ $n == 5 ]]' "leapio-hostd was replaced $n times, expected 5" || ok=1
    expect '[[ $clients == 1 ]]' "QEMU connected $clients times: its connection did not survive" || ok=1
    ((ok == 0)) && DETAIL="5 x $mode of leapio-hostd during verified fio, the runtime attached again after ${times} s, QEMU's connection kept; fio clean (slowest I/O ${maxlat} ms), guest kernel quiet"
    return $ok
}

test_hostd_upgrade() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    hostd_replaced upgrade
}

test_hostd_crash() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    hostd_replaced crash
}

# A flash namespace: 80 MiB of emulated NAND (2 channels x 2 dies x 80
# blocks x 64 pages of 4 KiB), op 0.25: a 64 MiB namespace.
flash_media=$LEAPIO_DATA/e2e-flash.nand
flash_ns="flash:$flash_media?channels=2&dies=2&blocks=80&pages=64&op=0.25"
# flash_mounted LOG: "valid_pages free_blocks torn_pages" socp logged at mount
flash_mounted() {
    grep -a 'flash media mounted' "$1" | tail -1 \
        | sed -n 's/.*valid_pages=\([0-9]*\).*free_blocks=\([0-9]*\).*torn_pages=\([0-9]*\).*/\1 \2 \3/p'
}

# fio's verified random writes of 3 x the namespace's capacity (each pass
# writes every block once, verified) through the guest: GC must run.
test_ftl_fio_verify() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    rm -f "$flash_media"
    boot ftl_fio_verify ftl "$flash_ns" -- --append "leapio.passes=3 leapio.size=32" || return 1
    local errs ioerr resets ok=0 size
    read -r errs ioerr resets <<< "$(guest_health)"
    size=$(stat -c %s "$flash_media")
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || ok=1
    # The next mount of the media says what is on it.
    start_leapio "$logs/ftl_fio_verify.mount.log" --ctrl "sock=$LEAPIO_RUN/e2e.sock,ns=$flash_ns" || { REASON="socp did not restart"; return 1; }
    stop_socp >/dev/null 2>&1 || true
    local valid free torn
    read -r valid free torn <<< "$(flash_mounted "$logs/ftl_fio_verify.mount.log")"
    expect '[[ -n $valid ]] && ((valid >= 16000 && torn == 0))' "after the run the media holds '$valid' valid pages (expected about 16384: 64 MiB written), '$torn' torn" || ok=1
    ((ok == 0)) && DETAIL="3 verified passes of 64 MiB random writes (4k-128k) on a 64 MiB flash namespace (80 MiB NAND); fio clean; media: $valid valid pages, $free free blocks, file $((size >> 20)) MiB"
    return $ok
}

# Write (2 verified passes), restart socp on the same media file, verify
# the last pass's data from a second boot.
test_ftl_restart() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    rm -f "$flash_media"
    boot ftl_restart ftl "$flash_ns" -- --append "leapio.passes=2 leapio.size=32" || return 1
    local first=$GLOG
    boot ftl_restart2 ftlverify "$flash_ns" -- --append "leapio.passes=2 leapio.size=32" || return 1
    local errs ioerr resets ok=0 valid free torn
    read -r errs ioerr resets <<< "$(guest_health)"
    read -r valid free torn <<< "$(flash_mounted "$logs/ftl_restart2.socp.log")"
    expect '[[ $errs == 0 ]]' "fio verify_only reported $errs errors" || ok=1
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || ok=1
    expect '[[ -n $valid ]]' "the second socp did not log its mount" || ok=1
    ((ok == 0)) && DETAIL="2 verified passes, socp stopped and started again (mount: $valid valid pages, $free free blocks, $torn torn), the last pass verified from a new boot ($(basename "$first"))"
    return $ok
}

# A zoned namespace: 32 MiB of emulated NAND (2 channels x 2 dies x 32
# blocks x 64 pages of 4 KiB): 32 zones of 1 MiB (one block of each die),
# at most 4 open and 6 active.
zns_media=$LEAPIO_DATA/e2e-zns.nand
zns_ns="zns:$zns_media?channels=2&dies=2&blocks=32&pages=64&max_open=4&max_active=6"
# zns_job NAME JOB [run-guest options]: boot a guest running JOB on a fresh
# zoned namespace; DETAIL gets the job's reason, and the guest's kernel
# must have logged no I/O error and no nvme reset
zns_job() {
    local name=$1 job=$2 ok=0 errs ioerr resets
    shift 2
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    rm -f "$zns_media"
    boot "$name" "$job" "$zns_ns" -- "$@" || return 1
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect '[[ $resets == 0 ]]' "the guest kernel logged $resets nvme timeouts/resets" || ok=1
    ((ok == 0)) && DETAIL="$(guestlog results "$GLOG" | sed -n "s/^$job ok //p")"
    return $ok
}

# blkzone report lists every zone (empty), the kernel sees a host-managed
# disk with the limits, a write moves a write pointer
test_zns_report() {
    zns_job zns_report znsreport || return 1
    local ioerr
    ioerr=$(guestlog kernel "$GLOG" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["guest_io_errors"])')
    expect '[[ $ioerr == 0 ]]' "the guest kernel logged $ioerr I/O errors"
}

# fio --zonemode=zbd --max_open_zones=4: verified random writes to zones
test_zns_fio_zbd_verify() {
    zns_job zns_fio_zbd_verify znsfio --append "leapio.size=16 leapio.zns_open=4" || return 1
    local ioerr
    ioerr=$(guestlog kernel "$GLOG" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["guest_io_errors"])')
    expect '[[ $ioerr == 0 ]]' "the guest kernel logged $ioerr I/O errors"
}

# nvme zns zone-append returns the LBA, the data reads back; a full zone
# refuses appends (the refusal is an I/O error the kernel may log)
test_zns_append() {
    zns_job zns_append znsappend
}

# opening more zones than allowed: Too Many Open Zones, Too Many Active
# Zones (refusals the kernel may log)
test_zns_limits() {
    zns_job zns_limits znslimits
}

# zone states and write pointers survive a restart of socp: written and
# closed zones come back closed at their write pointers, a finished zone
# full, an open zone with nothing written empty; data and the write rule hold
test_zns_restart() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    rm -f "$zns_media"
    boot zns_restart znswrite "$zns_ns" || return 1
    boot zns_restart2 znscheck "$zns_ns" || return 1
    local resets
    resets=$(guestlog kernel "$GLOG" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["guest_nvme_resets"])')
    expect '[[ $resets == 0 ]]' "the guest kernel logged $resets nvme timeouts/resets" || return 1
    DETAIL="$(guestlog results "$GLOG" | sed -n "s/^znscheck ok //p") (socp stopped and started again)"
}

# the zoned namespace over NVMe/TCP, to Linux's own NVMe/TCP host (the
# guest, QEMU user networking): blkzone report, zone appends, fio zbd
test_zns_tcp() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    local port=${LEAPIO_ZNS_TCP_PORT:-4431} nqn=nqn.2026-11.io.leapio:zns0 grc=0 i=0 r
    rm -f "$zns_media"
    GLOG=$logs/zns_tcp.guest.log
    start_socp "$logs/zns_tcp.socp.log" --tcp-target "listen=127.0.0.1:$port,nqn=$nqn,ns=$zns_ns" \
        || { REASON="socp did not start"; return 1; }
    until grep -q 'NVMe/TCP target listening' "$logs/zns_tcp.socp.log"; do
        ((i < 300)) && kill -0 "$SOCP_PID" 2>/dev/null || { REASON="socp is not listening"; return 1; }
        sleep 0.1
        i=$((i + 1))
    done
    run_guest --quiet --nic --job znstcp --log "$GLOG" --timeout "$boot_timeout" \
        --append "leapio.tcp_port=$port leapio.tcp_nqn=$nqn leapio.size=8 leapio.zns_open=4" || grc=$?
    stop_socp 2>>"$GLOG.harness" || { REASON="socp did not stop cleanly"; return 1; }
    r=$(guestlog results "$GLOG" | grep -m1 '^znstcp ' || true)
    [[ $grc == 0 && $r == "znstcp ok"* ]] || { REASON="guest: ${r:-no result} ($(guestlog results "$GLOG" | grep -v ' ok' | head -2 | tr '\n' ';'))"; return 1; }
    DETAIL="$(guestlog results "$GLOG" | sed -n 's/^znsreport ok \(zones=[0-9]*\).*/\1/p'); $(guestlog results "$GLOG" | sed -n 's/^znsappend ok //p'); fio zbd: $(guestlog results "$GLOG" | sed -n 's/^znsfio ok //p')"
}

# the zoned namespace in the split deployment: leapio-hostd answers the
# guest's Identify from what socp declared over the link (zones included)
test_zns_split() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    local dir=$logs/zns_split.d grc=0 stopped=0 r
    GLOG=$logs/zns_split.guest.log
    rm -rf "$dir" "$zns_media"
    start_split "$dir" e2e "$LEAPIO_RUN/e2e.sock" "$zns_ns" \
        || { REASON="leapio-hostd + socp did not start (see $dir)"; return 1; }
    run_guest --quiet --job znsreport,znsappend,znslimits --disk "vfio-user:$LEAPIO_RUN/e2e.sock" \
        --log "$GLOG" --timeout "$boot_timeout" || grc=$?
    stop_split 2>>"$GLOG.harness" || stopped=1
    r=$(guestlog results "$GLOG" | grep -v ' ok' | head -3 | tr '\n' ';')
    expect '[[ $grc == 0 && -z $r ]]' "guest (status $grc): ${r:-no result}" || return 1
    expect '((stopped == 0))' "socp or leapio-hostd did not stop cleanly" || return 1
    DETAIL="leapio-hostd + socp --link: $(guestlog results "$GLOG" | sed -n 's/^znsreport ok \(zones=[0-9]*\).*/\1/p'), appends and limits as all-in-one"
}

# socp_crasher GLOG TIMEOUT PATTERN ROUNDS POINT: once the guest console
# GLOG shows PATTERN, ROUNDS times: kill -9 the split's socp, start one that
# kills itself the N-th time it reaches POINT of the queue protocol (N
# random), wait until it has, start a normal one and wait until it serves.
# Run in the background; counts the runtimes that died at POINT in
# $SPLIT_DIR/crashes.
socp_crasher() {
    local glog=$1 timeout=$2 pat=$3 rounds=$4 point=$5 r n i pid attached crashed=0
    local plain=("${SPLIT_SOCP_ARGS[@]}")
    wait_log "$glog" "$pat" "$timeout" || { log "crasher: '$pat' never appeared"; return 1; }
    for ((r = 1; r <= rounds; r++)); do
        attached=$(grep -ac 'runtime attached' "$SPLIT_DIR/hostd.log")
        kill_gone "$(cat "$SPLIT_DIR/socp.pid")"
        n=$((3 + RANDOM % 15))
        SPLIT_SOCP_ARGS=("${plain[@]}" --crash-at "$point:$n")
        spawn_split_socp "$SPLIT_DIR/socp-c$r.log"
        SPLIT_SOCP_ARGS=("${plain[@]}")
        pid=$(cat "$SPLIT_DIR/socp.pid")
        i=0
        # Killed itself: gone, or its log says so while the kernel still
        # tears it down.
        while ! gone "$pid" && ! grep -aq 'test hook: killing myself' "$SPLIT_DIR/socp-c$r.log" \
            && ((i < 1500)); do
            sleep 0.02
            i=$((i + 1))
        done
        if gone "$pid" || grep -aq 'test hook: killing myself' "$SPLIT_DIR/socp-c$r.log"; then
            kill_gone "$pid"
            crashed=$((crashed + 1))
            log "crasher: runtime $r killed itself at $point:$n"
        else
            log "crasher: runtime $r did not reach $point:$n in 30 s"
            kill_gone "$pid"
        fi
        echo "$crashed" > "$SPLIT_DIR/crashes"
        spawn_split_socp "$SPLIT_DIR/socp-r$r.log"
        attached_since $((attached + 1))
        sleep 0.1
    done
}

# zoned writes that a runtime ran but never recorded the completion of run
# again in its successor and complete once (a second run of a zoned write
# would fail with Zone Invalid Write): fio --zonemode=zbd with verify on
# the split (throttled to 75 IOPS, so it outlasts the three rounds) while
# socp kills itself 3 times right after its backend ran a
# command
test_zns_crash_rerun() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    local dir=$logs/zns_crash_rerun.d grc=0 crashes reruns stopped=0 ok=0
    GLOG=$logs/zns_crash_rerun.guest.log
    rm -rf "$dir" "$zns_media"
    start_split "$dir" e2e "$LEAPIO_RUN/e2e.sock" "$zns_ns" \
        || { REASON="leapio-hostd + socp did not start (see $dir)"; return 1; }
    rm -f "$GLOG"
    socp_crasher "$GLOG" "$boot_timeout" "FIO-START znsfio" 3 executed &
    RESTARTER=$!
    run_guest --quiet --job znsfio --disk "vfio-user:$LEAPIO_RUN/e2e.sock" --log "$GLOG" \
        --timeout "$boot_timeout" --append "leapio.size=32 leapio.zns_open=4 leapio.zns_rate=75" || grc=$?
    wait "$RESTARTER" || true
    RESTARTER=''
    crashes=$(cat "$dir/crashes" 2>/dev/null || echo 0)
    reruns=$(cat "$dir"/socp-r*.log 2>/dev/null | grep -ac 'running again the commands the previous runtime had in flight' || true)
    stop_split 2>>"$GLOG.harness" || stopped=1
    expect_clean_split "$grc" "$stopped" || ok=1
    expect '[[ $crashes == 3 ]]' "$crashes of 3 runtimes reached the crash point" || ok=1
    expect '((reruns >= 3))' "the successors ran $reruns queues' commands again, expected one at least per crash" || ok=1
    ((ok == 0)) && DETAIL="3 runtimes killed after their backend ran a command, its completion unrecorded; the successors ran again $reruns queues' commands; fio zbd verify clean, guest kernel quiet"
    return $ok
}

# the flash FTL on a zoned block device (media=zoned, the zoned-block
# ioctls): in the guest, on the socp ZNS namespace; transports'
# zoned-check example, built static, verifies random overwrites (GC) and
# a reopen
# zoned_check_disk: the static zoned-check example as a raw disk image
# ($ZCHECK_IMG, $ZCHECK_BYTES long) for the guest's `zonedftl` job
ZCHECK_IMG=$LEAPIO_DATA/e2e-zcheck.img
zoned_check_disk() {
    local bin=$LEAPIO_REPO/target/x86_64-unknown-linux-gnu/release/examples/zoned-check
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release -p leapio-backends \
        --example zoned-check --target x86_64-unknown-linux-gnu >/dev/null 2>&1 \
        || { REASON="cannot build the static zoned-check example"; return 1; }
    ZCHECK_BYTES=$(stat -c %s "$bin")
    cp "$bin" "$ZCHECK_IMG"
    truncate -s $(((ZCHECK_BYTES + 4095) / 4096 * 4096)) "$ZCHECK_IMG"
}

test_ftl_zoned_device() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    zoned_check_disk || return 1
    rm -f "$zns_media"
    boot ftl_zoned_device zonedftl "$zns_ns" -- --disk "virtio:$ZCHECK_IMG" --append "leapio.zcheck_bytes=$ZCHECK_BYTES" || return 1
    local errs ioerr resets
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || return 1
    DETAIL="$(guestlog results "$GLOG" | sed -n 's/^zonedftl ok //p')"
}

# The FTL on another implementation's zoned device: QEMU's own ZNS
# namespace (hw/nvme, 64 zones of 1 MiB) is the guest's /dev/nvme0n1, and
# the zoned-check example runs the FTL (media=zoned) on it in the guest.
# No socp: the device under test is QEMU's.
test_ftl_qemu_zns() {
    [[ $target == socp ]] || { DETAIL="skipped (socp only)"; return 0; }
    zoned_check_disk || return 1
    local media=$LEAPIO_DATA/e2e-qemu-zns.img grc=0
    rm -f "$media"
    truncate -s 64M "$media"
    GLOG=$logs/ftl_qemu_zns.guest.log
    run_guest --quiet --job zonedftl --disk "nvme-zns:$media" --disk "virtio:$ZCHECK_IMG" \
        --append "leapio.zcheck_bytes=$ZCHECK_BYTES" --log "$GLOG" --timeout "$boot_timeout" || grc=$?
    rm -f "$media"
    case $grc in
    0) ;;
    124) REASON="guest timed out after ${boot_timeout}s"; return 1 ;;
    *) REASON="guest job failed: $(guestlog results "$GLOG" | grep -v ' ok' | head -3 | tr '\n' ';')"; return 1 ;;
    esac
    local errs ioerr resets
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $ioerr == 0 && $resets == 0 ]]' "the guest kernel logged $ioerr I/O errors and $resets nvme timeouts/resets" || return 1
    DETAIL="QEMU's ZNS namespace: $(guestlog results "$GLOG" | sed -n 's/^zonedftl ok //p')"
}

# ---- the SoC VM: socp (aarch64) in an emulated ARM SoC, through the link
# function leapio-hostd provides to it ----
soc_image() {
    [[ -n ${SOC_IMAGE_OK:-} ]] && return 0
    bash vm-images/build-soc.sh > /dev/null || { REASON="vm-images/build-soc.sh failed"; return 1; }
    SOC_IMAGE_OK=1
}

# start_hostd_soc DIR: leapio-hostd serving controller e2e (its vfio-user
# socket $LEAPIO_RUN/e2e.sock and its link function at $SOC_FSOCK).
# start_soc_after DIR HOSTPID NS [DISK]: once the host (HOSTPID, started by
# the caller against that socket) has connected, boot the SoC VM serving the
# controller with socp --link pci --ctrl name=e2e,ns=NS; wait until attached.
SOC_FSOCK=$LEAPIO_RUN/e2e-soc.sock
start_hostd_soc() {
    SOCP_LOG=$1/soc.log
    start_hostd "$1" "name=e2e,sock=$LEAPIO_RUN/e2e.sock,soc=$SOC_FSOCK" \
        || { REASON="leapio-hostd did not start (see $1/hostd.log)"; return 1; }
}
# attached_more HOSTD-LOG N: a runtime attached more than N times
attached_more() { (($(grep -ac 'runtime attached' "$1") > $2)); }
start_soc_after() { # DIR HOSTPID NS [DISK]
    wait_log "$1/hostd.log" 'vfio-user client connected' 60 "$2" \
        || { REASON="the host never connected to leapio-hostd"; return 1; }
    start_soc "$1/soc.log" "$boot_timeout" "name=e2e,ns=$3" "$SOC_FSOCK" "${4:-}" \
        || { REASON="the SoC VM did not start socp (see $1/soc.log)"; return 1; }
    wait_log "$1/hostd.log" 'runtime attached' 60 "$SOC_PID" \
        || { REASON="socp in the SoC VM did not attach (see $1/soc.log)"; return 1; }
}

# soc_guest NAME JOBS NS: the guest runs JOBS (info,fio[,reset]) on a disk
# served by socp in the SoC VM from namespace NS of the SoC's 256 MiB SSD
# (SOC_IOMMU, SOC_APPEND as start_soc takes them); socp there is killed -9
# and restarted once during the verified write. Then the SoC's status is
# read and everything stopped. Sets grc (the guest's exit), restarts, arch,
# alive, stopped, copied (socp's copied_bytes) and GLOG.
soc_guest() {
    local name=$1 jobs=$2 ns=$3 dir=$logs/$1.d ssd=$LEAPIO_DATA/e2e-soc-ssd.img st
    grc=0 restarts=0 arch='' alive=1 stopped=0 copied='?'
    GLOG=$logs/$name.guest.log
    rm -rf "$dir" "$GLOG"
    rm -f "$ssd"
    truncate -s 256M "$ssd"
    start_hostd_soc "$dir" || return 1
    bash scripts/run-guest.sh --quiet --job "$jobs" --disk "vfio-user:$LEAPIO_RUN/e2e.sock" \
        --log "$GLOG" --timeout "$boot_timeout" \
        --append "leapio.runtime=3 leapio.size=32 leapio.wait=120" &
    GUEST_PID=$!
    start_soc_after "$dir" "$GUEST_PID" "$ns" "$ssd" || return 1
    socp_restarter "$GLOG" "$boot_timeout" "FIO-START fio write 2" &
    RESTARTER=$!
    wait "$GUEST_PID" || grc=$?
    GUEST_PID=''
    wait "$RESTARTER" || true
    RESTARTER=''
    restarts=$(split_restarts) arch=$(soc_arch)
    kill -0 "$SOC_PID" 2>/dev/null || alive=0
    st=$(soc_status)
    st=${st%%$'\n'*}
    copied=$("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["controllers"][0]["namespaces"][0]["copied_bytes"])' "$st" 2>/dev/null) || copied='?'
    stop_soc 2>>"$GLOG.harness" || stopped=1
    stop_split 2>>"$GLOG.harness" || stopped=1
}

# The LeapIO deployment: the guest's disk is served by socp built for
# aarch64 and running in the SoC VM, from the SoC's own NVMe SSD (QEMU's
# emulated NVMe in the SoC VM) through the SoC's kernel. The guest
# identifies it, runs verified fio (socp in the SoC is killed -9 and
# restarted during the write phase) and resets the controller. The SoC's
# CPU copies the data (the page cache is the bounce buffer): the contrast
# to soc_vm_vfio.
test_soc_vm() {
    soc_image || return 1
    local grc restarts arch alive stopped copied ok=0 errs ioerr resets model nns size
    soc_guest soc_vm info,fio,reset file:/dev/nvme0n1 || return 1
    model=$(info_field 'd["model"]') nns=$(info_field 'len(d["namespaces"])')
    size=$(info_field 'd["namespaces"][0]["size_bytes"] if d["namespaces"] else 0')
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $grc == 0 ]]' "guest run failed (status $grc): $(guestlog results "$GLOG" | grep -v ' ok' | head -2 | tr '\n' ';')" || ok=1
    expect '[[ $arch == aarch64 ]]' "the SoC VM runs on '$arch', expected aarch64" || ok=1
    expect '[[ $model == "LeapIO virtual NVMe" && $nns == 1 && $size == $((256 << 20)) ]]' "guest sees model '$model', $nns namespace(s) of $size bytes; expected LeapIO's, 1 of the SoC SSD's 256 MiB" || ok=1
    expect '[[ $restarts == 1 ]]' "socp in the SoC was restarted $restarts times, expected 1" || ok=1
    expect '[[ $errs == 0 ]]' "fio reported $errs errors" || ok=1
    expect "grep -aq '@@LEAPIO RESET-DONE state=live' '$GLOG'" "no RESET-DONE marker: the controller reset did not complete" || ok=1
    # the reset job's nvme reset is itself one reset line: only errors count
    expect '[[ $ioerr == 0 ]]' "the guest kernel logged $ioerr I/O errors ($resets nvme reset/timeout lines)" || ok=1
    expect '[[ $copied =~ ^[0-9]+$ ]] && ((copied > 0))' "socp reports no bytes copied through the SoC's kernel ($copied)" || ok=1
    expect '((alive))' "the SoC VM died" || ok=1
    expect '((stopped == 0))' "socp in the SoC, the SoC VM or leapio-hostd did not stop cleanly" || ok=1
    ((ok == 0)) && DETAIL="socp on $arch: identify, verified fio with kill -9 + restart (attached after $(paste -sd, "$SPLIT_DIR/restart-times") s), reset; $((copied >> 20)) MiB copied by socp's CPU"
    return $ok
}

# The SSD moves the guest's data itself: socp in the SoC VM (with an IOMMU
# and a GICv3) drives the SoC's SSD from user space through VFIO, the
# guest's memory (the link function's RAM BAR) mapped into the SSD's IOMMU
# domain. The guest runs verified fio while socp is killed -9 and
# restarted (its successor resets the SSD and takes it over); socp's CPU
# copies no byte of it.
test_soc_vm_vfio() {
    soc_image || return 1
    local grc restarts arch alive stopped copied ok=0 errs ioerr resets size bound
    SOC_IOMMU=1 SOC_APPEND="leapio.vfio=1" soc_guest soc_vm_vfio info,fio 'nvme-pci:@SSD@' || return 1
    local dir=$logs/soc_vm_vfio.d
    bound=$(sed -n 's/.*@@SOC VFIO \([^ ]*\) \([^ ]*\).*/\1 \2/p' "$dir/soc.log" | tr -d '\r' | head -1)
    size=$(info_field 'd["namespaces"][0]["size_bytes"] if d["namespaces"] else 0')
    read -r errs ioerr resets <<< "$(guest_health)"
    expect '[[ $grc == 0 ]]' "guest run failed (status $grc): $(guestlog results "$GLOG" | grep -v ' ok' | head -2 | tr '\n' ';')" || ok=1
    expect '[[ $bound == *" vfio-pci" ]]' "the SoC's SSD was not bound to vfio-pci ('$bound')" || ok=1
    expect "grep -aq 'taken over through VFIO' '$dir/soc.log'" "socp did not drive the SSD through VFIO (see $dir/soc.log)" || ok=1
    expect '[[ $size == $((256 << 20)) ]]' "guest sees a namespace of $size bytes, expected the SoC SSD's 256 MiB" || ok=1
    expect '[[ $restarts == 1 ]]' "socp in the SoC was restarted $restarts times, expected 1" || ok=1
    expect '[[ $errs == 0 && $ioerr == 0 && $resets == 0 ]]' "fio errors $errs, guest I/O errors $ioerr, nvme resets/timeouts $resets" || ok=1
    expect '[[ $copied == 0 ]]' "socp copied $copied bytes of the guest's data (expected 0: the SSD moves it)" || ok=1
    expect '((alive))' "the SoC VM died" || ok=1
    expect '((stopped == 0))' "socp in the SoC, the SoC VM or leapio-hostd did not stop cleanly" || ok=1
    ((ok == 0)) && DETAIL="SSD ${bound%% *} on vfio-pci in the SoC: verified fio with kill -9 + restart (attached after $(paste -sd, "$SPLIT_DIR/restart-times") s), 0 bytes copied by socp"
    return $ok
}

# The same driver on x86: a guest with an emulated Intel IOMMU (interrupt
# remapping on) is the host. Its init binds its emulated NVMe SSD to
# vfio-pci; the all-in-one leapio serves it as an nvme-pci: namespace and
# leapio-perf drives that with verified random reads and writes on two
# queues, then reads back: no error or mismatch, no byte copied by socp.
test_host_vfio() {
    local dir=$logs/host_vfio.d ssd=$LEAPIO_DATA/e2e-host-vfio-ssd.img grc=0 ok=0 st b
    GLOG=$logs/host_vfio.guest.log
    rm -rf "$dir" "$GLOG"
    mkdir -p "$dir/root/usr/bin" "$dir/root/usr/lib/x86_64-linux-gnu"
    for b in leapio leapio-perf leapioctl; do
        [[ -x $LEAPIO_REPO/target/release/$b ]] || { REASON="no target/release/$b (cargo build --release)"; return 1; }
        strip -o "$dir/root/usr/bin/$b" "$LEAPIO_REPO/target/release/$b"
    done
    cp -L "$LEAPIO_ROOT/usr/lib/x86_64-linux-gnu/libgcc_s.so.1" "$dir/root/usr/lib/x86_64-linux-gnu/"
    local extra=$LEAPIO_DATA/images/e2e-host-vfio.cpio
    (cd "$dir/root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0) > "$extra"
    rm -f "$ssd"
    truncate -s 256M "$ssd"
    bash scripts/run-guest.sh --quiet --job vfio --iommu --extra-initrd "$extra" --disk "nvme:$ssd" \
        --log "$GLOG" --timeout "$boot_timeout" --append "leapio.vfio_secs=10" || grc=$?
    rm -f "$extra" "$ssd"
    local r
    r=$(guestlog block "$GLOG" vfio perf | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["ios"], d["verified_blocks"], d["mismatches"], d["errors"], d["stray_completions"], d["lost"], round(d["iops"]))' 2>/dev/null) \
        || r="0 0 ? ? ? ? 0"
    local ios vb mism errs stray lost iops copied rd
    read -r ios vb mism errs stray lost iops <<< "$r"
    rd=$(guestlog block "$GLOG" vfio perf-read | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["ios"] if d["errors"] == 0 else 0)' 2>/dev/null) || rd=0
    copied=$(guestlog block "$GLOG" vfio status | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(d["controllers"][0]["namespaces"][0]["copied_bytes"])' 2>/dev/null) || copied='?'
    expect '[[ $grc == 0 ]]' "guest run failed (status $grc): $(guestlog results "$GLOG" | grep -v ' ok' | head -2 | tr '\n' ';')" || ok=1
    expect "grep -aq 'taken over through VFIO' <(guestlog block '$GLOG' vfio log)" "leapio did not drive the SSD through VFIO" || ok=1
    expect '[[ $mism == 0 && $errs == 0 && $stray == 0 && $lost == 0 ]]' "mismatches $mism, errors $errs, stray completions $stray, lost $lost" || ok=1
    expect '((ios > 1000 && vb > 0 && rd > 0))' "only $ios I/Os ($vb blocks verified), $rd 128 KiB reads" || ok=1
    expect '[[ $copied == 0 ]]' "socp copied $copied bytes (expected 0: the SSD moves the data)" || ok=1
    ((ok == 0)) && DETAIL="x86 guest with an IOMMU: its NVMe SSD on vfio-pci, leapio-perf 2 queues x QD16 randrw: $ios I/Os ($iops IOPS), $vb blocks verified, $rd 128 KiB reads; 0 bytes copied"
    return $ok
}

# The queue protocol on a weakly ordered CPU: leapio-perf on the host drives
# four queues of verified random reads and writes against socp in the SoC VM
# (a file in the SoC's RAM: a ram: namespace would not outlive the runtime),
# and socp there is killed -9 and restarted once midway. No mismatch, no error, no stray or lost completion.
test_soc_stress() {
    soc_image || return 1
    local dir=$logs/soc_stress.d perf=$LEAPIO_REPO/target/release/leapio-perf prc=0
    [[ -x $perf ]] || { REASON="no $perf: cargo build --release -p leapio-tests --bin leapio-perf"; return 1; }
    GLOG=''
    rm -rf "$dir"
    start_hostd_soc "$dir" || return 1
    "$perf" --sock "$LEAPIO_RUN/e2e.sock" --wait-ns 120 -n 4 -q 16 -o 4k -w randrw -M 50 \
        --verify --range 16M -t 20 --json > "$dir/perf.json" 2> "$dir/perf.log" &
    PERF_PID=$!
    SOC_APPEND="leapio.scratch=64" start_soc_after "$dir" "$PERF_PID" file:/tmp/scratch.img || return 1
    # once the stress runs (its first writes done), a crash of socp in the SoC
    sleep 8
    local attached
    attached=$(grep -ac 'runtime attached' "$dir/hostd.log")
    soc_cmd restart
    wait_until 60 "$SOC_PID" attached_more "$dir/hostd.log" "$attached" \
        || { REASON="socp restarted in the SoC did not attach again"; return 1; }
    wait "$PERF_PID" || prc=$?
    PERF_PID=''
    local arch stopped=0 ok=0 r
    arch=$(soc_arch)
    stop_soc 2>>"$dir/harness.log" || stopped=1
    stop_split 2>>"$dir/harness.log" || stopped=1
    r=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ios"], d["verified_blocks"], d["mismatches"], d["errors"], d["stray_completions"], d["lost"], round(d["iops"]))' "$dir/perf.json" 2>/dev/null) \
        || r="0 0 ? ? ? ? 0"
    local ios vb mism errs stray lost iops
    read -r ios vb mism errs stray lost iops <<< "$r"
    expect '[[ $prc == 0 ]]' "leapio-perf failed (status $prc): $(tail -3 "$dir/perf.log" | tr '\n' ' ')" || ok=1
    expect '[[ $arch == aarch64 ]]' "the SoC VM runs on '$arch', expected aarch64" || ok=1
    expect '[[ $mism == 0 && $errs == 0 && $stray == 0 && $lost == 0 ]]' "mismatches $mism, errors $errs, stray completions $stray, lost $lost" || ok=1
    expect '((ios > 1000 && vb > 0))' "only $ios I/Os ($vb blocks verified)" || ok=1
    expect '((stopped == 0))' "socp in the SoC, the SoC VM or leapio-hostd did not stop cleanly" || ok=1
    ((ok == 0)) && DETAIL="socp on $arch, 4 queues x QD16 randrw: $ios I/Os ($iops IOPS), $vb blocks verified, kill -9 + restart midway; no mismatch, error, stray or lost completion"
    return $ok
}

passed=0 failed=0 t_all=$(now)
log "e2e: target $target, tests: ${tests[*]} (logs in $logs)"
for t in "${tests[@]}"; do
    declare -F "test_$t" >/dev/null || die "unknown test $t"
    REASON='' DETAIL=''
    t0=$(now)
    rm -rf "$logs/$t".*
    if "test_$t"; then
        printf 'PASS %-16s %6ss  %s\n' "$t" "$(elapsed "$t0")" "$DETAIL"
        passed=$((passed + 1))
    else
        printf 'FAIL %-16s %6ss  %s\n' "$t" "$(elapsed "$t0")" "${REASON:-failed}"
        [[ -n $GLOG ]] && guest_tail "$GLOG" 12
        [[ $target == socp ]] && socp_tail 12
        failed=$((failed + 1))
    fi
    # what a failed test left running does not spill into the next one
    e2e_cleanup
    RESTARTER='' PERF_PID=''
    GLOG='' SOCP_LOG=''
done
log "e2e took $(elapsed "$t_all") s (accel: $(sed -n 's/^accel=//p' "$LEAPIO_CACHE"/logs/e2e/*.guest.log.meta 2>/dev/null | sort -u | paste -sd' '))"
echo "$passed passed, $failed failed"
((failed == 0))
