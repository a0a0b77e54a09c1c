#!/usr/bin/env bash
# Interop test of the NVMe/TCP target with Linux's own NVMe/TCP host: socp
# exports a RAM namespace with --tcp-target on the host's loopback, a stock
# Linux guest (QEMU user networking, the host is 10.0.2.2) runs `nvme
# discover`, a refused `nvme connect` (host not on the allow list), `nvme
# connect`, fio write + verify on the namespace and `nvme disconnect` (job
# `tcp`); then DH-HMAC-CHAP (job `tcpauth`): a second host NQN whose entry
# on the allow list carries a secret and a controller secret (fresh random
# keys, SHA-256 and SHA-384 transformed; the target takes SHA-384 and
# ffdhe2048) is refused with a wrong secret (no controller, no namespace),
# then connects with --dhchap-secret and --dhchap-ctrl-secret (each queue
# authenticated, the controller too) and writes and verifies data.
#
# usage: bash scripts/e2e-tcp.sh
#   LEAPIO_ACCEL=auto|kvm|tcg (default auto); LEAPIO_E2E_TIMEOUT per boot
#   (default 300 s); LEAPIO_TCP_PORT (default 4420).
# Prints one line per test, then exactly "N passed, M failed"; exits non-zero
# if any test failed. Logs: $LEAPIO_CACHE/logs/e2e/tcp.{guest,socp}.log
# Expects target/release/socp (cargo build --release -p socp) and builds the
# guest image (quick when cached).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root
cd "$LEAPIO_REPO"
boot_timeout=${LEAPIO_E2E_TIMEOUT:-300}
port=${LEAPIO_TCP_PORT:-4420}
nqn=nqn.2026-11.io.leapio:tgt0
hostnqn=nqn.2014-08.org.nvmexpress:uuid:6c656170-696f-0000-0000-000000000001
authnqn=nqn.2014-08.org.nvmexpress:uuid:6c656170-696f-0000-0000-0000000000a1

bash vm-images/build.sh >/dev/null || die "vm-images/build.sh failed"
[[ -x $SOCP_BIN ]] || die "no $SOCP_BIN: run cargo build --release -p socp first"
logs=$LEAPIO_CACHE/logs/e2e
mkdir -p "$logs"
glog=$logs/tcp.guest.log
slog=$logs/tcp.socp.log
trap 'stop_guest; stop_socp >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM

passed=0 failed=0
report() { # name reason-or-empty [detail]
    if [[ -z $2 ]]; then
        echo "PASS $1${3:+: $3}"
        passed=$((passed + 1))
    else
        echo "FAIL $1: $2"
        failed=$((failed + 1))
    fi
}

key=$(dhchap_key 32 01)
ctrl_key=$(dhchap_key 48 02)
wrong_key=$(dhchap_key 32 00)
reason=''
start_socp "$slog" --tcp-target "listen=127.0.0.1:$port,nqn=$nqn,ns=ram:256M,allow=$hostnqn,allow=$authnqn:$key:$ctrl_key,dhchap-hashes=sha384:sha256,dhchap-dhgroups=ffdhe2048:null" \
    || reason="socp did not start (see $slog)"
if [[ -z $reason ]]; then
    i=0
    until grep -q 'NVMe/TCP target listening' "$slog"; do
        ((i < 300)) || { reason="socp is not listening after 30 s (see $slog)"; break; }
        kill -0 "$SOCP_PID" 2>/dev/null || { reason="socp exited (see $slog)"; break; }
        sleep 0.1
        i=$((i + 1))
    done
fi
if [[ -z $reason ]]; then
    grc=0
    run_guest --quiet --nic --job tcp,tcpauth --log "$glog" --timeout "$boot_timeout" \
        --append "leapio.tcp_port=$port leapio.tcp_nqn=$nqn leapio.tcp_hostnqn=$hostnqn leapio.size=8 leapio.auth_hostnqn=$authnqn leapio.auth_secret=$key leapio.auth_ctrl_secret=$ctrl_key leapio.auth_wrong=$wrong_key" || grc=$?
    case $grc in
    0 | 1) ;; # 1: a job failed, said per test below
    124) reason="guest timed out after ${boot_timeout}s" ;;
    *) reason="guest did not finish (see $glog and $glog.stderr)" ;;
    esac
    if ! kill -0 "$SOCP_PID" 2>/dev/null; then
        reason="socp died during the test${reason:+; $reason}"
    elif ! stop_socp 2>>"$glog.harness"; then
        reason="${reason:+$reason; }socp did not stop cleanly"
    fi
fi
# job_reason JOB: empty when the guest's job JOB reported ok
job_reason() {
    local r
    r=$(guestlog results "$glog" 2>/dev/null | grep -m1 "^$1 " || true)
    case $r in
    "$1 ok"*) ;;
    '') echo "${reason:-the guest reported no result for $1}" ;;
    *) echo "guest: ${r#"$1 "}" ;;
    esac
}
detail() { guestlog results "$glog" 2>/dev/null | grep -m1 "^$1 ok" | cut -d' ' -f3- || true; }
r_tcp=${reason:-$(job_reason tcp)}
r_auth=${reason:-$(job_reason tcpauth)}
r_wrong=${reason:-$(job_reason tcpauth_wrong)}
# socp's side: every queue of the authenticated host (admin and each I/O
# queue) authenticated, and the wrong secret failed
if [[ -z $r_auth ]]; then
    nq=$(grep -c 'queue authenticated (DH-HMAC-CHAP)' "$slog" || true)
    nio=$(grep 'queue authenticated (DH-HMAC-CHAP)' "$slog" | grep -vc 'qid=0' || true)
    if ((nq < 2 || nio < 1)); then
        r_auth="socp logged $nq authenticated queue(s), $nio of them I/O queues"
    fi
fi
if [[ -z $r_wrong ]] && ! grep -q 'DH-HMAC-CHAP authentication failed' "$slog"; then
    r_wrong="socp did not log the refused authentication"
fi
if [[ -n $r_tcp$r_auth$r_wrong ]]; then
    socp_tail 20
    guest_tail "$glog" 30
fi
report nvme_tcp_linux_host "$r_tcp"
report nvme_tcp_dhchap_linux_host "$r_auth" "$(detail tcpauth)${nq:+, socp: $nq queues authenticated}"
report nvme_tcp_dhchap_wrong_secret "$r_wrong" "$(detail tcpauth_wrong)"
echo "$passed passed, $failed failed"
((failed == 0))
