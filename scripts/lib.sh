# Shared helpers for the project's shell scripts. Source it; do not run it.
LEAPIO_CACHE=${LEAPIO_CACHE:-/var/cache/leapio}
log() { printf '[leapio] %s\n' "$*" >&2; }
die() { printf '[leapio] error: %s\n' "$*" >&2; exit 1; }
need_root() { [[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and uses chroot)"; }
