#!/usr/bin/env bash
# A fault campaign against the split deployment (not part of the tests: it
# runs for as long as asked). leapio-faults keeps a verified 4 KiB
# read/write workload in flight on one controller while it kills socp
# (SIGKILL, and at random steps of the queue protocol), stops and continues
# it (SIGSTOP), upgrades it in place (--handover), sends a hostile second
# runtime to the link, and with --remote kills and restarts the NVMe/TCP
# target the namespace lives on; then reads every chunk back.
#
# usage: bash scripts/fault-campaign.sh [--seconds S] [--remote] [--seed N] [--json]
#   --seconds S  how long faults are injected (default 300)
# Prints the faults per kind, I/Os, errors, mismatches and the longest I/O
# pause; exits non-zero if anything was lost or read back wrong.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
case ${1:-} in
-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
cd "$LEAPIO_REPO"
log "building socp and leapio-faults (release)"
cargo build --release --quiet -p socp -p leapio-tests || die "cargo build failed"
args=("$@")
[[ " ${args[*]} " == *" --seconds "* ]] || args+=(--seconds 300)
exec target/release/leapio-faults "${args[@]}"
