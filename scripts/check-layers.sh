#!/usr/bin/env bash
# The dependency rules between the project's crates (ARCHITECTURE.md,
# "Layers"): each crate may depend, directly or not, only on the crates
# listed for it. Above all the runtime (socp) never depends on the host side
# (leapio-host-driver, leapio-vmm-shim): the aarch64 socp on an SoC links
# nothing of it. The all-in-one `leapio` is the one crate that depends on
# both sides. Fails naming the crate, the dependency it must not have, and
# the path that brings it in (cargo tree -i).
#
# usage: bash scripts/check-layers.sh
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
cd "$LEAPIO_REPO"

declare -A allowed=(
    # wire types and protocols: nothing of the project
    [leapio-nvme]=""
    [leapio-nvme-auth]=""
    [leapio-fuse]=""
    [leapio-service]=""
    [leapio-options]=""
    # the operator's client: the control protocol only
    [leapioctl]="leapio-service"
    [leapio-backend]=""
    # guest memory, the controller core, the link (the host-runtime
    # contract), the backends
    [leapio-ats]="leapio-nvme"
    [leapio-virtio]="leapio-nvme leapio-ats"
    [leapio-controller]="leapio-nvme leapio-ats leapio-backend"
    [leapio-link]="leapio-nvme"
    [leapio-fs]="leapio-fuse"
    [leapio-backends]="leapio-nvme leapio-nvme-auth leapio-backend leapio-options"
    # the host side
    [leapio-vmm-shim]="leapio-nvme leapio-service"
    [leapio-host-driver]="leapio-nvme leapio-ats leapio-backend leapio-controller leapio-link leapio-vmm-shim leapio-service leapio-options"
    # the runtime: nothing of the host side
    [socp]="leapio-nvme leapio-nvme-auth leapio-ats leapio-controller leapio-link leapio-backend leapio-backends leapio-service leapio-options"
    # the all-in-one: both sides
    [leapio]="leapio-nvme leapio-nvme-auth leapio-ats leapio-controller leapio-link leapio-backend leapio-backends leapio-service leapio-options leapio-vmm-shim leapio-host-driver socp"
)

internal() { # the workspace's crates CRATE depends on (normal dependencies)
    cargo tree --offline -q -p "$1" -e normal --prefix none --format '{p}' \
        | awk '{print $1}' | sort -u | grep -E '^(leapio|socp)' | grep -vx "$1" || true
}

members=$(cargo metadata --offline --no-deps --format-version 1 \
    | python3 -c 'import json,sys; print("\n".join(p["name"] for p in json.load(sys.stdin)["packages"]))')
bad=0
for crate in $members; do
    [[ $crate == leapio-tests ]] && continue
    if [[ ! -v allowed[$crate] ]]; then
        log "check-layers: crate $crate has no rule here: add it to scripts/check-layers.sh"
        bad=1
        continue
    fi
    for dep in $(internal "$crate"); do
        if [[ " ${allowed[$crate]} " != *" $dep "* ]]; then
            log "check-layers: $crate must not depend on $dep; it comes in through:"
            cargo tree --offline -q -p "$crate" -e normal -i "$dep" | sed 's/^/    /' >&2
            bad=1
        fi
    done
done
((bad == 0)) || die "check-layers: the crates' dependencies break the layering (ARCHITECTURE.md, Layers)"
log "check-layers: every crate depends only on the layers below it"
