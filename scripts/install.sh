#!/usr/bin/env bash
# Install LeapIO's daemons and their systemd units on this machine:
#   binaries   leapio-hostd socp leapio leapioctl  -> PREFIX/bin (/usr/local/bin)
#   units      scripts/systemd/*.service *.socket  -> /etc/systemd/system
#   configs    scripts/systemd/*.toml               -> /etc/leapio (an existing
#              file is never overwritten)
# then `systemctl daemon-reload` when systemd runs this machine (PID 1), and
# says what it did. Running it again changes only what differs.
#
# The units and sample configurations live in scripts/systemd/, beside the
# scripts that install and check them (install.sh, check-systemd.sh): the
# project has no packaging tree for them to stand apart in.
#
# A script rather than a .deb: LeapIO builds from source on the operator's
# machine (for its CPU, with its Rust toolchain); `cargo deb` would need a
# packaging toolchain and a build per architecture, and a package would
# only wrap the same files.
#
# usage: bash scripts/install.sh [--no-build] [--from DIR] [--prefix DIR] [--root DIR]
#   --no-build    do not build; take the binaries already built
#   --from DIR    where the built binaries are (default: target/release, or
#                 $CARGO_TARGET_DIR/release)
#   --prefix DIR  install the binaries in DIR/bin (default /usr/local); the
#                 units' ExecStart= name them there
#   --root DIR    install everything under DIR as if it were / (staging, or a
#                 test's temporary root); no daemon-reload then
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

build=1
from=''
prefix=/usr/local
root=''
while (($#)); do
    case $1 in
        --no-build) build=0 ;;
        --from) from=${2:?--from DIR}; shift ;;
        --prefix) prefix=${2:?--prefix DIR}; shift ;;
        --root) root=${2:?--root DIR}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ $prefix == /* ]] || die "--prefix must be an absolute path, got '$prefix'"
[[ -z $root || $root == /* ]] || die "--root must be an absolute path, got '$root'"
prefix=${prefix%/}
root=${root%/}

bins=(leapio-hostd socp leapio leapioctl)
units_src=$LEAPIO_REPO/scripts/systemd
from=${from:-${CARGO_TARGET_DIR:-$LEAPIO_REPO/target}/release}

if ((build)); then
    need_cmd cargo "install the Rust toolchain (https://rustup.rs), or give --no-build"
    log "building release binaries (cargo build --release)"
    (cd "$LEAPIO_REPO" && cargo build --release -p leapio-host-driver -p socp -p leapio -p leapioctl --bins)
fi
for b in "${bins[@]}"; do
    [[ -x $from/$b ]] || die "$from/$b not found: build it (cargo build --release) or give --from DIR"
done

bindir=$root$prefix/bin
unitdir=$root/etc/systemd/system
confdir=$root/etc/leapio
installed=0
unchanged=0

# put MODE SRC DEST: install SRC as DEST unless DEST is the same already.
put() {
    local mode=$1 src=$2 dest=$3
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        log "unchanged  $dest"
        unchanged=$((unchanged + 1))
        return
    fi
    install -D -m "$mode" "$src" "$dest"
    log "installed  $dest"
    installed=$((installed + 1))
}

for b in "${bins[@]}"; do
    put 0755 "$from/$b" "$bindir/$b"
done

# The units name the binaries in /usr/local/bin: another prefix is written
# into them.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for u in "$units_src"/*.service "$units_src"/*.socket; do
    name=$(basename "$u")
    sed "s|/usr/local/bin/|$prefix/bin/|g" "$u" > "$tmp/$name"
    put 0644 "$tmp/$name" "$unitdir/$name"
done

for c in "$units_src"/*.toml; do
    dest=$confdir/$(basename "$c")
    if [[ -e $dest ]]; then
        log "kept       $dest (exists: not overwritten; the sample is $c)"
        unchanged=$((unchanged + 1))
    else
        install -D -m 0644 "$c" "$dest"
        log "installed  $dest"
        installed=$((installed + 1))
    fi
done

if [[ -n $root ]]; then
    log "staged under $root: no systemctl daemon-reload"
elif [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    log "systemctl daemon-reload: done"
else
    log "systemd does not run this machine (PID 1 is $(ps -p 1 -o comm= 2>/dev/null || echo unknown)): no daemon-reload"
fi
log "$installed installed, $unchanged unchanged"
if [[ -z $root ]]; then
    log "next: edit /etc/leapio/hostd.toml; systemctl enable --now leapio-fd-keeper.socket leapio-hostd.service"
    log "      cp /etc/leapio/socp-example.toml /etc/leapio/socp-vm0.toml (edit); systemctl enable --now socp@vm0.service"
fi
