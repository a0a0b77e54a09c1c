#!/usr/bin/env bash
# The systemd units of scripts/systemd/, checked as installed:
#   1. scripts/install.sh stages the binaries, units and sample configs in a
#      temporary root, twice (the second run must change nothing);
#   2. `systemd-analyze --root=ROOT verify` checks every unit there: it
#      parses them, resolves their dependencies and checks that each
#      ExecStart= binary exists in ROOT. Verifying needs no running systemd,
#      but it loads the units a unit depends on by default (sysinit.target,
#      ...) from ROOT too: the system's own units are copied in. Anything it
#      prints fails the check;
#   3. where systemd runs this machine (/run/systemd/system exists), each
#      binary runs under systemd-run as a transient Type=notify service with
#      a watchdog: it must become active (READY=1), stay active past several
#      watchdog periods, and stop cleanly. Elsewhere (a container whose PID 1
#      is another init) this part is skipped, saying why.
#
# usage: bash scripts/check-systemd.sh [--from DIR]
#   --from DIR  the built binaries (default: target/release, or
#               $CARGO_TARGET_DIR/release)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

from=${CARGO_TARGET_DIR:-$LEAPIO_REPO/target}/release
while (($#)); do
    case $1 in
        --from) from=${2:?--from DIR}; shift ;;
        *) die "unknown argument '$1' (usage: check-systemd.sh [--from DIR])" ;;
    esac
    shift
done
need_cmd systemd-analyze "apt-get install systemd"

work=$(mktemp -d /tmp/leapio-systemd.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root

# 1. Install, then install again: nothing may change.
bash "$LEAPIO_REPO/scripts/install.sh" --no-build --from "$from" --root "$root"
again=$(bash "$LEAPIO_REPO/scripts/install.sh" --no-build --from "$from" --root "$root" 2>&1)
printf '%s\n' "$again" >&2
grep -q ' 0 installed,' <<<"$again" || die "install.sh is not idempotent: its second run installed something"

# 2. systemd-analyze verify, in the staged root.
sysunits=/usr/lib/systemd/system
[[ -d $sysunits ]] || sysunits=/lib/systemd/system
[[ -d $sysunits ]] || die "no system unit directory (/usr/lib/systemd/system) to verify against"
mkdir -p "$root/usr/lib/systemd"
cp -a "$sysunits" "$root/usr/lib/systemd/system"
units=()
for u in "$LEAPIO_REPO"/scripts/systemd/*.service "$LEAPIO_REPO"/scripts/systemd/*.socket; do
    name=$(basename "$u")
    # A template is verified as an instance (socp@example reads the sample
    # config socp-example.toml).
    [[ $name == *@.service ]] && name=${name%@.service}@example.service
    units+=("$name")
done
log "systemd-analyze --root=ROOT verify ${units[*]}"
rc=0
out=$(systemd-analyze --root="$root" verify "${units[@]}" 2>&1) || rc=$?
if ((rc != 0)) || [[ -n $out ]]; then
    printf '%s\n' "$out" >&2
    die "systemd-analyze verify failed (exit $rc)"
fi
log "systemd-analyze verify: every unit is clean ($(systemd-analyze --version | head -1))"
# The exposure scores, for the record (not a check).
for u in "${units[@]}"; do
    [[ $u == *.service ]] || continue
    systemd-analyze security --offline=yes --root="$root" "$u" 2>/dev/null | tail -1 >&2 || true
done

# 3. Under systemd-run, where systemd is the service manager.
if [[ ! -d /run/systemd/system ]]; then
    log "systemd-run: skipped: systemd does not run this machine (PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo unknown), /run/systemd/system is missing), so there is no manager to start a transient service"
    exit 0
fi
need_cmd systemd-run
run_dir=$work/run
mkdir -p "$run_dir"
# run_unit NAME BINARY ARGS...: a transient Type=notify service with a 2 s
# watchdog; systemd-run returns once it is active (READY=1 came).
run_unit() {
    local name=$1 unit=leapio-check-$1-$$ state result
    shift
    log "systemd-run: $name"
    systemd-run --quiet --unit="$unit" --property=Type=notify --property=NotifyAccess=main \
        --property=WatchdogSec=2s --property=TimeoutStartSec=30s -- "$@" \
        || die "systemd-run $name: it did not start (journalctl -u $unit)"
    sleep 5
    state=$(systemctl show -P ActiveState "$unit")
    [[ $state == active ]] || die "$name under systemd: $state after 5 s of a 2 s watchdog (journalctl -u $unit)"
    log "$name under systemd: active, status: $(systemctl show -P StatusText "$unit")"
    systemctl stop "$unit"
    result=$(systemctl show -P Result "$unit" 2>/dev/null || echo success)
    [[ $result == success ]] || die "$name under systemd: stopped with result $result (journalctl -u $unit)"
    systemctl reset-failed "$unit" 2>/dev/null || true
}
run_unit hostd "$from/leapio-hostd" --link "unix:$run_dir/link.sock" --control "$run_dir/hostd-ctl.sock" \
    --ctrl "name=vm0,sock=$run_dir/vm0.sock"
run_unit socp "$from/socp" --control "$run_dir/socp-ctl.sock" --pollers 2
run_unit leapio "$from/leapio" --control "$run_dir/leapio-ctl.sock" --ctrl "sock=$run_dir/vm1.sock,ns=ram:16M"
log "systemd-run: every daemon ran as a Type=notify service with a watchdog"
