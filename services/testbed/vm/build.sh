#!/usr/bin/env bash
# Build vnet's tiny test VM from Debian packages: the cloud kernel and a
# busybox initramfs with the virtio-net modules. Needs root for apt-get.
#   build.sh OUTDIR   ->  OUTDIR/vmlinuz  OUTDIR/initrd.img  OUTDIR/kernel-version
set -euo pipefail
out="$(realpath -m "${1:?usage: build.sh OUTDIR}")"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The versioned kernel package the meta package points at today.
kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
pkg="$(kernel_pkg)"
if [ -z "$pkg" ]; then apt-get update -qq && pkg="$(kernel_pkg)"; fi
[ -n "$pkg" ] || { echo "build.sh: no linux-image-cloud-amd64 in apt's lists (run apt-get update)" >&2; exit 1; }
(cd "$work" && apt-get download "$pkg" >/dev/null 2>&1 || apt-get download "$pkg")
dpkg-deb -x "$work"/"$pkg"_*.deb "$work/kernel"
version="$(ls "$work/kernel/lib/modules")"
mods="$work/kernel/lib/modules/$version/kernel"
root="$work/initramfs"
mkdir -p "$root"/{bin,proc,sys,dev,lib/modules,tmp}
cp /bin/busybox "$root/bin/busybox"
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
         drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/core/failover \
         drivers/net/net_failover drivers/net/virtio_net; do
  src="$mods/$m.ko"
  if [ -f "$src.xz" ]; then xz -dc "$src.xz" > "$root/lib/modules/$(basename "$m").ko"
  else cp "$src" "$root/lib/modules/"; fi
done
install -m 0755 "$here/init" "$root/init"
mkdir -p "$out"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.img"
cp "$work/kernel/boot/vmlinuz-$version" "$out/vmlinuz"
echo "$version" > "$out/kernel-version"
echo "vm: $out/vmlinuz ($version) and $out/initrd.img"
