#!/usr/bin/env bash
# Interop test of the NVMe/TCP target with Linux's own NVMe/TCP host: socp
# exports a RAM namespace with --tcp-target on the host's loopback, a stock
# Linux guest (QEMU user networking, the host is 10.0.2.2) runs `nvme
# discover`, a refused `nvme connect` (host not on the allow list), `nvme
# connect`, fio write + verify on the namespace and `nvme disconnect`.
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

bash vm-images/build.sh >/dev/null || die "vm-images/build.sh failed"
[[ -x $SOCP_BIN ]] || die "no $SOCP_BIN: run cargo build --release -p socp first"
logs=$LEAPIO_CACHE/logs/e2e
mkdir -p "$logs"
glog=$logs/tcp.guest.log
slog=$logs/tcp.socp.log
trap 'stop_guest; stop_socp >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM

passed=0 failed=0
report() { # name reason-or-empty
    if [[ -z $2 ]]; then
        echo "PASS $1"
        passed=$((passed + 1))
    else
        echo "FAIL $1: $2"
        failed=$((failed + 1))
    fi
}

reason=''
start_socp "$slog" --tcp-target "listen=127.0.0.1:$port,nqn=$nqn,ns=ram:256M,allow=$hostnqn" \
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
    run_guest --quiet --nic --job tcp --log "$glog" --timeout "$boot_timeout" \
        --append "leapio.tcp_port=$port leapio.tcp_nqn=$nqn leapio.tcp_hostnqn=$hostnqn leapio.size=8" || grc=$?
    case $grc in
    0) ;;
    124) reason="guest timed out after ${boot_timeout}s" ;;
    1) reason="guest job failed: $(guestlog results "$glog" | grep -v ' ok' | head -3 | tr '\n' ';')" ;;
    *) reason="guest did not finish (see $glog and $glog.stderr)" ;;
    esac
    if ! kill -0 "$SOCP_PID" 2>/dev/null; then
        reason="socp died during the test${reason:+; $reason}"
    elif ! stop_socp 2>>"$glog.harness"; then
        reason="${reason:+$reason; }socp did not stop cleanly"
    fi
fi
if [[ -n $reason ]]; then
    socp_tail 20
    guest_tail "$glog" 30
fi
report nvme_tcp_linux_host "$reason"
echo "$passed passed, $failed failed"
((failed == 0))
