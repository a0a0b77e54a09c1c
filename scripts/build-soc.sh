#!/usr/bin/env bash
# Build socp for the SoC VM: aarch64, release, inside the Debian trixie root
# (rustc/cargo 1.97 with the arm64 standard library and the aarch64 cross
# linker, installed by setup-host.sh). The root reaches no registry itself:
# the crates are vendored from the host's cargo (cargo vendor, offline when
# the host has them) into the root, the sources copied (git ls-files, mtimes
# kept so the build is incremental).
#
# usage: bash scripts/build-soc.sh [--tests]
#   --tests  also build the tests of socp and of the link for aarch64
#            (cargo test --no-run; the release profile, sharing the
#            dependencies the binary was built with)
# Prints the host path of the aarch64 socp binary on stdout.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
need_root
cd "$LEAPIO_REPO"
tests=0
case ${1:-} in
--tests) tests=1 ;;
'') ;;
*) die "build-soc.sh: unknown argument $1 (usage: build-soc.sh [--tests])" ;;
esac
[[ -f $LEAPIO_ROOT/.leapio-soc-ready-v1 ]] || die "the SoC tools are missing from $LEAPIO_ROOT: run scripts/setup-host.sh"
need_cmd cargo "install Rust (rustup)"

soc=$LEAPIO_DATA/soc
src=$soc/src
vendor=$soc/vendor
mkdir -p "$soc"

# vendored crates, refreshed when Cargo.lock changes
lock_hash=$(sha256sum Cargo.lock | cut -c1-16)
if [[ ! -f $vendor/.lock-$lock_hash ]]; then
    log "vendoring crates for the aarch64 build ($vendor)"
    rm -rf "$vendor"
    cargo vendor --locked --versioned-dirs --quiet "$vendor" > /dev/null \
        || die "cargo vendor failed"
    touch "$vendor/.lock-$lock_hash"
fi

# the sources, as git has them (mtimes kept: an unchanged file is not rebuilt)
mkdir -p "$src"
git ls-files -z | xargs -0 tar -cf - --no-recursion | tar -xpf - -C "$src"
# files the tree no longer has (moved or deleted) leave the copy too
comm -z -23 \
    <(cd "$src" && find . \( -path ./target -o -path ./.cargo \) -prune -o -type f -printf '%P\0' | sort -z) \
    <(git ls-files -z | sort -z) |
    (cd "$src" && xargs -0 -r rm -f --)
mkdir -p "$src/.cargo"
cat > "$src/.cargo/config.toml" <<CFG
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "$LEAPIO_GUEST_DIR/soc/vendor"

[target.aarch64-unknown-linux-gnu]
linker = "aarch64-linux-gnu-gcc"
CFG

log "building socp for aarch64 (cargo in $LEAPIO_ROOT)"
t0=$(now)
chroot "$LEAPIO_ROOT" sh -c "cd $LEAPIO_GUEST_DIR/soc/src && cargo build --offline --release --quiet --target aarch64-unknown-linux-gnu -p socp --no-default-features -p leapioctl --bin socp --bin leapioctl" >&2 \
    || die "the aarch64 build of socp failed"
bin=$src/target/aarch64-unknown-linux-gnu/release/socp
[[ -x $bin ]] || die "no $bin after the build"
log "aarch64 socp built in $(elapsed "$t0") s"
if ((tests)); then
    t0=$(now)
    chroot "$LEAPIO_ROOT" sh -c "cd $LEAPIO_GUEST_DIR/soc/src && cargo test --offline --release --quiet --no-run --target aarch64-unknown-linux-gnu -p socp --no-default-features -p leapio-link" >&2 \
        || die "the aarch64 build of the tests of socp and leapio-link failed"
    log "aarch64 tests of socp and leapio-link built in $(elapsed "$t0") s"
fi
echo "$bin"
