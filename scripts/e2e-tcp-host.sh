#!/usr/bin/env bash
# Interop test of socp's NVMe/TCP host backend (ns=nvme-tcp:...) with Linux's
# own NVMe/TCP target: a stock Linux guest (the `nvmet` job of
# vm-images/init) exports a 256 MiB brd RAM namespace with nvmet-tcp on its
# port 4420, which QEMU user networking forwards to 127.0.0.1:PORT on the host
# (loopback only). On the host:
#   1. leapio-perf --spawn 'ns=nvme-tcp:127.0.0.1:PORT/NQN?...' runs a
#      verified random read/write mix (every read checks the pattern written
#      by the run) without digests,
#   2. the same with header and data digests (hdgst=1&ddgst=1),
#   3. a host NQN missing from the target's allow list is refused (Connect
#      Invalid Host),
#   4. a socp process with --ctrl sock=...,ns=nvme-tcp:...&hdgst=1&ddgst=1
#      driven by leapio-perf --sock (the CLI path); socp's log must show
#      digests negotiated on its I/O queues,
#   5. DH-HMAC-CHAP: nvmet admits a second host NQN only with its
#      dhchap_key (and dhchap_ctrl_key; hmac(sha384), ffdhe2048) in
#      configfs: leapio-perf --spawn with dhchap= and dhchap-ctrl= runs a
#      verified mix (every queue authenticated, the controller too), and the
#      same host without a secret, or with a wrong one, is refused,
#   6. the guest is told to stop (a connection to its forwarded stop port),
#      must report no digest errors in nvmet's log and power off by itself.
#
# usage: bash scripts/e2e-tcp-host.sh
#   LEAPIO_ACCEL=auto|kvm|tcg (default auto); LEAPIO_TCP_HOST_TIME measured
#   seconds of runs 1 and 2 (default 10; run 4 takes half); LEAPIO_TCP_HOST_PORT
#   host port forwarded to the guest's 4420 (default: a free one).
# Prints one line per test (with IOPS), then exactly "N passed, M failed";
# exits non-zero if any test failed. Logs: $LEAPIO_CACHE/logs/e2e/tcp-host.*
# Expects target/release/socp (cargo build --release -p socp); builds
# leapio-perf (quick when fresh) and the guest image (quick when cached).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

need_root
cd "$LEAPIO_REPO"
t0=$(now)
runtime=${LEAPIO_TCP_HOST_TIME:-10}
nqn=nqn.2026-11.io.leapio:linux-tgt
hostnqn=nqn.2026-11.io.leapio:e2e-host
dhnqn=nqn.2026-11.io.leapio:e2e-dhchap-host
perf=$LEAPIO_REPO/target/release/leapio-perf

bash vm-images/build.sh >/dev/null || die "vm-images/build.sh failed"
[[ -x $SOCP_BIN && -x $LEAPIO_BIN ]] || die "no $SOCP_BIN or $LEAPIO_BIN: run cargo build --release -p socp -p leapio first"
cargo build --release --quiet -p leapio-tests --bin leapio-perf || die "cannot build leapio-perf"
logs=$LEAPIO_CACHE/logs/e2e
mkdir -p "$logs"
glog=$logs/tcp-host.guest.log
slog=$logs/tcp-host.socp.log
sock=$LEAPIO_RUN/tcp-host.sock
rm -f "$logs"/tcp-host.perf-*
log "builds took $(elapsed "$t0") s"
t0=$(now)

# two free loopback ports: the forwarded NVMe/TCP port and the stop port
read -r port stop_port < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
port=${LEAPIO_TCP_HOST_PORT:-$port}
base="nvme-tcp:127.0.0.1:$port/$nqn?hostnqn=$hostnqn&qd=16&retry=5000"
dh_key=$(dhchap_key 48 02)
dh_ctrl_key=$(dhchap_key 32 00)
dh_wrong=$(dhchap_key 48 02)
dh_base="nvme-tcp:127.0.0.1:$port/$nqn?hostnqn=$dhnqn&qd=16"

# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    stop_socp >/dev/null 2>&1 || true
    stop_guest
}
trap cleanup EXIT
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

# perf_check JSON RC: prints "SUMMARY|WHY", WHY empty when the run passed
perf_check() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
try:
    r = json.load(open(path))
except Exception as e:
    print(f"|no JSON report (exit {rc}): {e}")
    sys.exit()
summary = (f"{r['iops']:.0f} IOPS, {r['mib_s']:.2f} MiB/s, p99 {r['latency']['p99_us'] / 1000:.1f} ms, "
           f"{r['verified_blocks']} blocks verified")
why = []
if rc != 0:
    why.append(f"exit {rc}")
for k in ("errors", "mismatches", "lost", "stray_completions"):
    if r[k]:
        why.append(f"{k}={r[k]}")
if r["first_error"]:
    why.append(f"first error: {r['first_error']}")
if r["first_mismatch"]:
    why.append(f"first mismatch: {r['first_mismatch']}")
if not r["verify"] or r["verified_blocks"] == 0 or r["ios"] == 0:
    why.append("nothing verified")
print(summary + "|" + "; ".join(why))
EOF
}

# perf_run NAME ARGS...: one leapio-perf run (bounded), JSON in the logs
perf_run() {
    local name=$1 rc=0 out
    shift
    timeout -k 5 90 "$perf" "$@" -w randrw -M 50 -o 16k -q 16 --verify --json \
        > "$logs/tcp-host.perf-$name.json" 2> "$logs/tcp-host.perf-$name.err" || rc=$?
    out=$(perf_check "$logs/tcp-host.perf-$name.json" "$rc")
    [[ -z ${out#*|} ]] || sed 's/^/    perf| /' "$logs/tcp-host.perf-$name.err" | tail -n 10 >&2
    report "$name" "${out#*|}" "${out%%|*}"
}

# ---- the guest: Linux's nvmet-tcp target ----
log "booting the nvmet guest (127.0.0.1:$port -> guest:4420, stop port $stop_port)"
rm -f "$glog" # no stale READY marker from an earlier run
bash scripts/run-guest.sh --quiet --job nvmet --log "$glog" --timeout 150 \
    --hostfwd "tcp:127.0.0.1:$port-:4420" --hostfwd "tcp:127.0.0.1:$stop_port-:4421" \
    --append "leapio.nvmet_nqn=$nqn leapio.nvmet_hostnqn=$hostnqn leapio.nvmet_size=256 leapio.nvmet_hold=120 leapio.nvmet_dhchap_host=$dhnqn leapio.nvmet_dhchap_key=$dh_key leapio.nvmet_dhchap_ctrl_key=$dh_ctrl_key leapio.nvmet_dhchap_hash=hmac(sha384) leapio.nvmet_dhchap_dhgroup=ffdhe2048" &
GUEST_PID=$!
ready='' i=0
while ((i < 900)); do # 90 s
    if grep -aq '@@LEAPIO NVMET-READY' "$glog" 2>/dev/null; then
        ready=1
        break
    fi
    kill -0 "$GUEST_PID" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
if [[ -z $ready ]]; then
    guest_tail "$glog" 30
    [[ -s $glog.stderr ]] && sed 's/^/    qemu| /' "$glog.stderr" >&2
    report nvmet_guest_ready "the guest's target did not come up within 90 s (see $glog)"
    echo "$passed passed, $failed failed"
    exit 1
fi
log "nvmet target ready after $(elapsed "$t0") s"

# ---- 1, 2: socp in-process (leapio-perf --spawn), without and with digests ----
perf_run tcp_host_nvmet_plain --spawn "ns=$base" -t "$runtime" --range 64M
perf_run tcp_host_nvmet_digests --spawn "ns=$base&hdgst=1&ddgst=1" -t "$runtime" --range 64M

# ---- 3: a host NQN the target does not allow ----
rc=0
timeout -k 5 30 "$perf" --spawn "ns=nvme-tcp:127.0.0.1:$port/$nqn?hostnqn=nqn.2026-11.io.leapio:stranger&retry=1000" \
    -t 1 > /dev/null 2> "$logs/tcp-host.perf-refused.err" || rc=$?
if ((rc == 0)); then
    report tcp_host_nvmet_refused "a host missing from the allow list could connect"
elif ((rc == 124 || rc == 137)); then
    report tcp_host_nvmet_refused "leapio-perf hung instead of failing"
elif grep -aqE 'Connect.*Status\(sct=0x1, sc=0x84' "$logs/tcp-host.perf-refused.err"; then
    report tcp_host_nvmet_refused "" "Connect failed with Connect Invalid Host (sct 1, sc 0x84)"
else
    report tcp_host_nvmet_refused "not refused with Connect Invalid Host: $(tail -n 1 \
        "$logs/tcp-host.perf-refused.err" | cut -c1-300)"
fi

# ---- 4: the CLI path: a socp process with a remote namespace, digests on ----
reason='' out='|' nq=0
RUST_LOG=info,leapio_backends::nvme_tcp=debug start_leapio "$slog" \
    --ctrl "sock=$sock,ns=$base&hdgst=1&ddgst=1" || reason="socp did not start (see $slog)"
if [[ -z $reason ]]; then
    rc=0
    timeout -k 5 90 "$perf" --sock "$sock" --socp-pid "$SOCP_PID" -w randrw -M 50 -o 16k -q 16 \
        -t $(((runtime + 1) / 2)) --range 32M --verify --json \
        > "$logs/tcp-host.perf-cli.json" 2> "$logs/tcp-host.perf-cli.err" || rc=$?
    out=$(perf_check "$logs/tcp-host.perf-cli.json" "$rc")
    reason=${out#*|}
    nq=$(grep -c 'NVMe/TCP I/O queue connected' "$slog" || true)
    nd=$(grep 'NVMe/TCP I/O queue connected' "$slog" | grep -c 'header: true, data: true' || true)
    if ((nq == 0 || nd != nq)); then
        reason="${reason:+$reason; }digests not negotiated on every I/O queue ($nd of $nq)"
    fi
    if ! kill -0 "$SOCP_PID" 2>/dev/null; then
        reason="${reason:+$reason; }socp died during the test"
    fi
    stop_socp 2>> "$slog.harness" || reason="${reason:+$reason; }socp did not stop cleanly"
fi
[[ -z $reason ]] || socp_tail 15
report tcp_host_nvmet_socp_cli "$reason" "${out%%|*}, digests on $nq I/O queue(s)"

# ---- 5: DH-HMAC-CHAP with nvmet (keys in configfs) ----
perf_run tcp_host_nvmet_dhchap --spawn "ns=$dh_base&retry=5000&dhchap=$dh_key&dhchap-ctrl=$dh_ctrl_key" \
    -t $(((runtime + 1) / 2)) --range 32M
reason=''
for case in none wrong; do
    opt=''
    [[ $case == wrong ]] && opt="&dhchap=$dh_wrong"
    rc=0
    timeout -k 5 30 "$perf" --spawn "ns=$dh_base&retry=1000$opt" -t 1 > /dev/null \
        2> "$logs/tcp-host.perf-dhchap-$case.err" || rc=$?
    err=$(tail -n 1 "$logs/tcp-host.perf-dhchap-$case.err")
    if ((rc == 0)); then
        reason="${reason:+$reason; }$case: the host could connect"
    elif ((rc == 124 || rc == 137)); then
        reason="${reason:+$reason; }$case: leapio-perf hung instead of failing"
    elif [[ $case == none && $err != *'requires DH-HMAC-CHAP authentication'* ]]; then
        reason="${reason:+$reason; }no secret: not asked to authenticate: ${err: -300}"
    elif [[ $case == wrong && $err != *'refused authentication'* ]]; then
        reason="${reason:+$reason; }wrong secret: not refused by the controller: ${err: -300}"
    fi
done
report tcp_host_nvmet_dhchap_refused "$reason" "without a secret: asked to authenticate; with a wrong one: refused"

# ---- 6: stop the guest; it must report no digest errors and power off ----
reason=''
if ! { exec 3<> "/dev/tcp/127.0.0.1/$stop_port" && echo stop >&3 && exec 3>&-; } 2>/dev/null; then
    reason="could not reach the guest's stop port"
fi
grc=0
i=0
while kill -0 "$GUEST_PID" 2>/dev/null && ((i < 300)); do # 30 s
    sleep 0.1
    i=$((i + 1))
done
if kill -0 "$GUEST_PID" 2>/dev/null; then
    reason="${reason:+$reason; }the guest did not power off within 30 s of the stop request"
    stop_guest
else
    wait "$GUEST_PID" || grc=$?
    GUEST_PID=''
fi
res=$(grep -a '@@LEAPIO RESULT nvmet' "$glog" | tail -1 | tr -d '\r' || true)
res=${res#@@LEAPIO RESULT nvmet }
if [[ -z $reason ]]; then
    case $grc in
    0) ;;
    124) reason="guest timed out" ;;
    1) reason="guest job failed: $res" ;;
    *) reason="guest did not finish (exit $grc, see $glog)" ;;
    esac
fi
[[ -z $reason && $res != *' digest_errors=0 '* ]] && reason="nvmet logged digest errors: $res"
[[ -z $reason ]] || guest_tail "$glog" 25
report tcp_host_nvmet_guest "$reason" "${res#ok }"
log "took $(elapsed "$t0") s (guest console: $glog)"
echo "$passed passed, $failed failed"
((failed == 0))
