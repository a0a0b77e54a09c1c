#!/usr/bin/env bash
# THE test command (CI runs it through .ci/run, as root, in a fresh clone):
#   setup-host.sh, cargo fmt --check, cargo clippy -D warnings, the
#   crates' dependency rules (scripts/check-layers.sh), cargo build
#   of every binary (the split tests start socp processes), cargo test
#   (nextest if installed), the fuzz targets (scripts/fuzz.sh --dev
#   --seconds 8: each built and run briefly), cargo build --release -p socp -p
#   leapio -p leapio-host-driver -p leapio-tests (leapio-perf),
#   scripts/check-systemd.sh (the units installed in a temporary root,
#   systemd-analyze verify, systemd-run where systemd runs the machine),
#   scripts/build-soc.sh
#   --tests (socp for aarch64, and the aarch64 build of the tests of socp
#   and the link), scripts/e2e.sh (with the SoC VM tests),
#   scripts/e2e-tcp.sh, scripts/e2e-tcp-host.sh, scripts/e2e-rdma.sh.
# Stops at the first failing stage and names it.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
cd "$LEAPIO_REPO"
t0=$(now)

stage() { # name command...
    local name=$1 s rc=0
    shift
    s=$(now)
    log "==== stage: $name"
    "$@" || rc=$?
    if ((rc != 0)); then
        log "==== FAILED stage: $name (exit $rc, after $(elapsed "$s") s)"
        exit "$rc"
    fi
    log "==== ok: $name ($(elapsed "$s") s)"
}

stage setup-host bash scripts/setup-host.sh
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found: install the Rust toolchain (https://rustup.rs; rustfmt and clippy components) and put ~/.cargo/bin in PATH"
stage fmt cargo fmt --all -- --check
stage clippy cargo clippy --workspace --all-targets -- -D warnings
stage layers bash scripts/check-layers.sh
stage build-bins cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    stage test cargo nextest run --workspace
else
    stage test cargo test --workspace
fi
stage fuzz bash scripts/fuzz.sh --dev --seconds 8
stage build-release cargo build --release -p socp -p leapio -p leapio-host-driver -p leapioctl -p leapio-tests --bins
stage systemd bash scripts/check-systemd.sh
stage build-soc bash scripts/build-soc.sh --tests
stage e2e bash scripts/e2e.sh
stage e2e-tcp bash scripts/e2e-tcp.sh
stage e2e-tcp-host bash scripts/e2e-tcp-host.sh
stage e2e-rdma bash scripts/e2e-rdma.sh
log "all stages passed in $(elapsed "$t0") s"
