#!/bin/bash
# Build a local Debian base image with no container registry: debootstrap a
# minimal bookworm root filesystem from the machine's own apt mirror and turn
# it into an image with `docker import`. The vnet image builds FROM it
# (make compose-base; docker build --build-arg BASE=<tag>).
#
#   compose/base/build.sh [TAG] [WORKDIR]
#
# Environment: VNET_DEBIAN_MIRROR (default: the first Debian URI in the
# machine's /etc/apt/sources.list*), VNET_DEBIAN_SUITE (default bookworm).
set -euo pipefail

tag=${1:-vnet-base:bookworm}
work=${2:-build/compose-base}
suite=${VNET_DEBIAN_SUITE:-bookworm}
# What the services and the guest workloads use (python3-venv brings pip via ensurepip).
packages=python3,python3-venv,iproute2,iputils-ping,procps,iperf3,netcat-openbsd

# The mirror apt already uses, in either sources format; never a written-in host name.
mirror_from_apt() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v suite="$suite" '
        /^[ \t]*#/ { next }
        /^URIs:/ { uris = $2 }
        /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uris != "") { print uris; exit } }
        /^deb[ \t]/ {
            j = 2; if ($j ~ /^\[/) { while ($j !~ /\]$/) j++; j++ }
            if ($(j + 1) == suite) { print $j; exit }
        }
        /^$/ { uris = "" }
    ' "${files[@]}"
}

mirror=${VNET_DEBIAN_MIRROR:-$(mirror_from_apt)}
if [ -z "$mirror" ]; then
    echo "no Debian mirror for '$suite' in /etc/apt/sources.list*; set VNET_DEBIAN_MIRROR" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing (apt-get install debootstrap)" >&2; exit 1; }

rootfs="$work/rootfs"
rm -rf "$rootfs"
mkdir -p "$work"
echo "debootstrap $suite (minbase + $packages) into $rootfs"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2; exit 1; }
# Small and reproducible enough: no package lists, caches or docs in the image.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
echo "docker import -> $tag"
tar --numeric-owner -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "vnet base: debootstrap $suite minbase" - "$tag" >/dev/null
rm -rf "$rootfs"
docker image inspect --format '{{.Id}} {{.Size}}' "$tag"
