#!/usr/bin/env bash
# End-to-end tests of NVMe over RDMA, in one guest with Debian's generic
# kernel (soft-RoCE over a veth pair; vm-images/build-rdma.sh): socp's host
# backend and socp's target, against Linux's and each other: Linux's host
# on socp's target (discover, connect, fio verify), DH-HMAC-CHAP, socp's
# target killed and restarted under a verifying host, hostile hosts beside
# a well-behaved one (see the `rdma` job
# in vm-images/init). One boot for every test.
#
# usage: bash scripts/e2e-rdma.sh
#   LEAPIO_E2E_TIMEOUT per boot (default 600 s)
# Prints one line per test, then exactly "N passed, M failed"; exits
# non-zero if any failed. Logs: $LEAPIO_CACHE/logs/e2e-rdma/.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
cd "$LEAPIO_REPO"
timeout=${LEAPIO_E2E_TIMEOUT:-600}
logs=$LEAPIO_CACHE/logs/e2e-rdma
rm -rf "$logs"
mkdir -p "$logs"
t0=$(now)
bash vm-images/build-rdma.sh > /dev/null
# the programs, for the guest: an archive appended to its initramfs
extra=$LEAPIO_DATA/images/e2e-rdma.cpio
rdma_programs_cpio "$logs/root" "$extra"
glog=$logs/guest.log
grc=0
# DH-HMAC-CHAP secrets for rdma_auth: the host's, the controller's, a wrong one
keys="leapio.rdma_key=$(dhchap_key 48 02) leapio.rdma_ctrl_key=$(dhchap_key 32 00) leapio.rdma_wrong=$(dhchap_key 48 02)"
bash scripts/run-guest.sh --quiet --image rdma --job rdma --extra-initrd "$extra" \
    --append "$keys" --log "$glog" --timeout "$timeout" || grc=$?
rm -f "$extra"
passed=0 failed=0
while read -r name r detail; do
    if [[ $r == ok ]]; then
        printf 'PASS %-20s %s\n' "$name" "$detail"
        passed=$((passed + 1))
    else
        printf 'FAIL %-20s %s\n' "$name" "$detail"
        failed=$((failed + 1))
    fi
done < <(grep -a '^@@LEAPIO RDMA-TEST ' "$glog" | sed 's/^@@LEAPIO RDMA-TEST //' | tr -d '\r')
if ((passed + failed == 0)); then
    printf 'FAIL %-20s %s\n' rdma "the guest ran no RDMA test (status $grc; see $glog)"
    failed=1
    guest_tail "$glog" 20
elif ((grc != 0 && failed == 0)); then
    printf 'FAIL %-20s %s\n' rdma "the guest run failed (status $grc; see $glog)"
    failed=$((failed + 1))
fi
log "e2e-rdma took $(elapsed "$t0") s"
echo "$passed passed, $failed failed"
((failed == 0))
