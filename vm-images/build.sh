#!/usr/bin/env bash
# Build the guest initramfs from the Debian trixie root made by
# scripts/setup-host.sh: busybox-static (+ applet symlinks), fio, nvme-cli and
# blkzone with the shared libraries they load (resolved with ldd inside the root, plus
# ld.so), virtio_blk.ko (for the virtio-blk baseline), the NVMe/TCP host and
# target modules (jobs `tcp`, `nvmet`), the VFIO modules (job `vfio`) and
# vm-images/init.
#
# Reproducible: sorted file list, mtimes fixed to 0, owner 0:0, `cpio
# --reproducible`, deterministic zstd. Cached: the output name carries a hash
# of the recipe (this script, init, the package versions, the kernel), so it
# is rebuilt only when one of them changes; a cached run takes well under a
# second.
#
# Writes $LEAPIO_DATA/images/guest.env with, as seen inside the root:
#   KERNEL=/boot/vmlinuz-...   INITRD=/var/lib/leapio/images/initramfs-<hash>.cpio.zst
# and prints the host path of that file on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../scripts/lib.sh
. "$here/../scripts/lib.sh"

need_root
[[ -x $LEAPIO_ROOT/usr/bin/qemu-system-x86_64 ]] || die "no trixie root at $LEAPIO_ROOT: run scripts/setup-host.sh first"
need_cmd cpio "apt-get install cpio"
need_cmd zstd "apt-get install zstd"

images=$LEAPIO_DATA/images
mkdir -p "$images"
env_file=$images/guest.env

kernels=("$LEAPIO_ROOT"/boot/vmlinuz-*-cloud-amd64)
[[ -f ${kernels[0]} ]] || die "no kernel in $LEAPIO_ROOT/boot"
kernel=/boot/${kernels[-1]##*/}
kver=${kernel#/boot/vmlinuz-}

pkgs=(busybox-static fio nvme-cli util-linux "linux-image-$kver")
versions=$(chroot "$LEAPIO_ROOT" dpkg-query -W "${pkgs[@]}") || die "missing packages in the root: ${pkgs[*]}"
hash=$( { cat "$here/build.sh" "$here/init"; echo "$versions"; echo "$kernel"; } | sha256sum | cut -c1-16)
initrd=$LEAPIO_GUEST_DIR/images/initramfs-$hash.cpio.zst
out=$LEAPIO_ROOT$initrd

if [[ -f $out && -f $env_file ]] && grep -qx "INITRD=$initrd" "$env_file"; then
    echo "$out"
    exit 0
fi

log "building guest initramfs $hash (kernel $kver)"
start=$(now)
work=$(mktemp -d "$images/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
st=$work/root
mkdir -p "$st"/{usr/bin,usr/sbin,usr/lib/modules,usr/lib64,proc,sys,dev,tmp,run,etc,root,mnt}
ln -s usr/bin "$st/bin"
ln -s usr/sbin "$st/sbin"
ln -s usr/lib "$st/lib"
ln -s usr/lib64 "$st/lib64"

# copy_file PATH: copy a file of the root (following symlinks) to the staging
# tree at its canonical directory, keeping the file name it was asked by
copy_file() {
    local p=$1 dir
    dir=$(chroot "$LEAPIO_ROOT" readlink -f "$(dirname "$p")")
    mkdir -p "$st$dir"
    cp -L "$LEAPIO_ROOT$p" "$st$dir/${p##*/}"
}

# busybox and its applets (links to /usr/bin/busybox)
cp "$LEAPIO_ROOT/usr/bin/busybox" "$st/usr/bin/busybox"
while read -r applet; do
    case $applet in
    bin/* | usr/bin/*) dst=usr/bin/${applet##*/} ;;
    sbin/* | usr/sbin/*) dst=usr/sbin/${applet##*/} ;;
    *) continue ;;
    esac
    [[ -e $st/$dst || -L $st/$dst ]] || ln -s /usr/bin/busybox "$st/$dst"
done < <(chroot "$LEAPIO_ROOT" /usr/bin/busybox --list-full | LC_ALL=C sort)

# fio, nvme-cli, blkzone (util-linux, for zoned disks) and every shared
# object they need, ld.so included
bins=(/usr/bin/fio /usr/sbin/nvme /usr/sbin/blkzone)
for b in "${bins[@]}"; do
    rm -f "$st$b"
    copy_file "$b"
done
libs=$(chroot "$LEAPIO_ROOT" ldd "${bins[@]}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | LC_ALL=C sort -u)
[[ -n $libs ]] || die "ldd found no libraries for ${bins[*]}"
for l in $libs; do
    copy_file "$l"
done
# the dynamic loader must also be reachable at the path baked into binaries
[[ -e $st/lib64/ld-linux-x86-64.so.2 ]] || die "ld.so missing from the image"

# virtio_blk (module in the cloud kernel; its dependencies are built in)
xz -dc "$LEAPIO_ROOT"/lib/modules/"$kver"/kernel/drivers/block/virtio_blk.ko.xz > "$st/usr/lib/modules/virtio_blk.ko"

# NVMe/TCP host job (`tcp`): virtio-net for QEMU user networking, and the
# fabrics host modules (all modules in the cloud kernel), in load order
for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net \
    drivers/nvme/host/nvme-fabrics drivers/nvme/host/nvme-tcp; do
    xz -dc "$LEAPIO_ROOT/lib/modules/$kver/kernel/$m.ko.xz" > "$st/usr/lib/modules/${m##*/}.ko"
done

# NVMe/TCP target job (`nvmet`): Linux's target (configfs, nvmet, nvmet-tcp)
# and brd for its RAM namespace (all modules in the cloud kernel)
for m in fs/configfs/configfs drivers/nvme/target/nvmet drivers/nvme/target/nvmet-tcp \
    drivers/block/brd; do
    xz -dc "$LEAPIO_ROOT/lib/modules/$kver/kernel/$m.ko.xz" > "$st/usr/lib/modules/${m##*/}.ko"
done

# VFIO (job `vfio`: socp in the guest drives an emulated NVMe SSD from user
# space behind the guest's IOMMU), in load order
for m in virt/lib/irqbypass drivers/vfio/vfio drivers/vfio/vfio_iommu_type1 \
    drivers/vfio/pci/vfio-pci-core drivers/vfio/pci/vfio-pci; do
    xz -dc "$LEAPIO_ROOT/lib/modules/$kver/kernel/$m.ko.xz" > "$st/usr/lib/modules/${m##*/}.ko"
done

install -m 0755 "$here/init" "$st/init"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$st/etc/passwd"
printf 'root:x:0:\n' > "$st/etc/group"

find "$st" -exec touch -h -d @0 {} +
(cd "$st" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc --reproducible --owner=0:0) \
    | zstd -q -T1 -10 -o "$work/initramfs.cpio.zst"
mv "$work/initramfs.cpio.zst" "$out"
printf 'KERNEL=%s\nINITRD=%s\n' "$kernel" "$initrd" > "$env_file.tmp"
mv "$env_file.tmp" "$env_file"
# keep only the newest image
for old in "$images"/initramfs-*.cpio.zst; do
    [[ $old == "$out" ]] || rm -f "$old"
done
log "guest initramfs: $out ($(du -h "$out" | cut -f1), $(elapsed "$start") s)"
echo "$out"
