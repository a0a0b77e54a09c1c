#!/usr/bin/env bash
# Build the RDMA guest's image: Debian's generic kernel (it has soft-RoCE,
# rdma_rxe, beside nvme-rdma and nvmet-rdma; the cloud kernel has no
# software RDMA device) and an initramfs made of the standard guest's
# (vm-images/build.sh: busybox, fio, nvme-cli, vm-images/init) followed by a
# second archive: the generic kernel's modules for soft-RoCE, NVMe over RDMA
# (host and target), veth, brd and configfs with their dependencies and
# modprobe's indexes; kmod (/sbin/modprobe: the kernel loads crc32 for rxe
# through it), iproute2's ip and rdma, the verbs and RDMA CM libraries with
# the rxe provider. The guest's init calls those tools by their paths under
# /usr/lib/leapio (busybox's own ip and modprobe would run otherwise).
#
# Writes $LEAPIO_DATA/images/rdma.env with, as seen inside the root:
#   KERNEL=/boot/vmlinuz-...-amd64  INITRD=/var/lib/leapio/images/rdma-<hash>.cpio
# and prints the host path of the initramfs. Cached by a hash of its recipe.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/lib.sh
. "$here/../scripts/lib.sh"
need_root
need_cmd cpio "apt-get install cpio"
need_cmd zstd "apt-get install zstd"

base=$(bash "$here/build.sh")
images=$LEAPIO_DATA/images
kernels=("$LEAPIO_ROOT"/boot/vmlinuz-*[0-9]-amd64)
[[ -f ${kernels[0]} ]] || die "no generic kernel in $LEAPIO_ROOT/boot: run scripts/setup-host.sh"
kernel=/boot/${kernels[-1]##*/}
kver=${kernel#/boot/vmlinuz-}
mods=$LEAPIO_ROOT/lib/modules/$kver
[[ -f $mods/modules.dep ]] || die "no modules for $kver in the root"
versions=$(chroot "$LEAPIO_ROOT" dpkg-query -W -f='${Package} ${Version}\n' \
    "linux-image-$kver" kmod iproute2 libibverbs1 librdmacm1 ibverbs-providers 2>/dev/null)
hash=$( { cat "$here/build-rdma.sh"; sha256sum "$base"; echo "$versions"; } | sha256sum | cut -c1-16)
initrd=$LEAPIO_GUEST_DIR/images/rdma-$hash.cpio
out=$LEAPIO_ROOT$initrd
env_file=$images/rdma.env
if [[ -f $out && -f $env_file ]] && grep -qx "INITRD=$initrd" "$env_file"; then
    echo "$out"
    exit 0
fi

log "building the RDMA guest's initramfs $hash (kernel $kver)"
work=$(mktemp -d "$images/rdma-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
st=$work/root
mkdir -p "$st/usr/lib/leapio" "$st/usr/sbin" "$st/etc"

# the modules and everything they need, from modules.dep
want=(drivers/infiniband/sw/rxe/rdma_rxe drivers/infiniband/core/rdma_ucm
    drivers/nvme/host/nvme-rdma drivers/nvme/target/nvmet-rdma
    drivers/net/veth drivers/block/brd fs/configfs/configfs crypto/crc32_generic)
declare -A have=()
add_module() { # kernel/...ko.xz
    local m=$1 d
    [[ -n ${have[$m]:-} ]] && return
    have[$m]=1
    for d in $(sed -n "s|^$m: *||p" "$mods/modules.dep"); do
        add_module "$d"
    done
}
for m in "${want[@]}"; do
    grep -q "^kernel/$m.ko.xz:" "$mods/modules.dep" || die "no module $m in $kver"
    add_module "kernel/$m.ko.xz"
done
for m in "${!have[@]}"; do
    mkdir -p "$st/usr/lib/modules/$kver/$(dirname "$m")"
    cp "$mods/$m" "$st/usr/lib/modules/$kver/$m"
done
cp "$mods"/modules.* "$st/usr/lib/modules/$kver/"

# copy_file PATH: a file of the root, at its canonical directory
copy_file() {
    local p=$1 dir
    dir=$(chroot "$LEAPIO_ROOT" readlink -f "$(dirname "$p")")
    mkdir -p "$st$dir"
    cp -L "$LEAPIO_ROOT$p" "$st$dir/${p##*/}"
}
provider=$(cd "$LEAPIO_ROOT" && ls usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so | head -1)
[[ -n $provider ]] || die "no rxe provider in the root (ibverbs-providers)"
bins=("/$provider" /usr/lib/x86_64-linux-gnu/libibverbs.so.1 /usr/lib/x86_64-linux-gnu/librdmacm.so.1)
for t in kmod ip rdma ibv_devices; do
    p=$(chroot "$LEAPIO_ROOT" sh -c "PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v $t") || die "no $t in the root"
    bins+=("$(chroot "$LEAPIO_ROOT" readlink -f "$p")")
done
for b in "${bins[@]}"; do
    copy_file "$b"
done
libs=$(chroot "$LEAPIO_ROOT" ldd "${bins[@]}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | LC_ALL=C sort -u)
for l in $libs; do
    copy_file "$l"
done
mkdir -p "$st/etc/libibverbs.d"
cp "$LEAPIO_ROOT"/etc/libibverbs.d/rxe.driver "$st/etc/libibverbs.d/"
# by path, away from busybox's applets; the kernel's usermode helper
# runs /sbin/modprobe
for t in kmod ip rdma ibv_devices; do
    p=$(chroot "$LEAPIO_ROOT" sh -c "PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v $t")
    ln -sf "$(chroot "$LEAPIO_ROOT" readlink -f "$p")" "$st/usr/lib/leapio/$t"
done
ln -sf kmod "$st/usr/lib/leapio/modprobe"
ln -sf /usr/lib/leapio/modprobe "$st/usr/sbin/modprobe"

find "$st" -exec touch -h -d @0 {} +
# the standard image, then (on a 4-byte boundary) this one
{
    cat "$base"
    head -c $(((4 - $(stat -c %s "$base") % 4) % 4)) /dev/zero
    (cd "$st" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --reproducible --owner=0:0) \
        | zstd -q -T1 -10
} > "$work/rdma.cpio"
mv "$work/rdma.cpio" "$out"
for old in "$images"/rdma-*.cpio; do
    [[ $old == "$out" ]] || rm -f "$old"
done
printf 'KERNEL=%s\nINITRD=%s\n' "$kernel" "$initrd" > "$env_file"
log "RDMA guest initramfs: $out ($(du -h "$out" | cut -f1))"
echo "$out"
