#!/usr/bin/env bash
# Finishes the appliance's root the same way for both builds: image/customize.sh (Debian,
# with mmdebstrap) and buildroot/board/rackvault/post-build.sh (Buildroot). Run it once
# image/overlay/ is in place and the `rackvault` user exists:
#   finish-rootfs.sh ROOTFS VERSION UPDATE_PUBLIC_KEY_HEX
# It writes the version and the update key, the mount point and fstab line of the EFI system
# partition (writable by the daemon only), and the directories the units use.
set -euo pipefail
rootfs=$1 version=$2 pubkey=$3
[[ $pubkey =~ ^[0-9a-f]{64}$ ]] || { echo "finish-rootfs.sh: not a public key (64 hex digits): $pubkey" >&2; exit 2; }
install -d -m 0755 "$rootfs/usr/lib/rackvault" "$rootfs/srv" "$rootfs/var/lib/rackvault" "$rootfs/efi"
printf '%s\n' "$version" >"$rootfs/usr/lib/rackvault/version"
# The only key whose update bundles this image accepts.
printf '%s\n' "$pubkey" >"$rootfs/usr/lib/rackvault/update.pub"
ids=$(awk -F: '$1 == "rackvault" { print $3, $4 }' "$rootfs/etc/passwd")
[[ -n $ids ]] || { echo "finish-rootfs.sh: $rootfs has no rackvault user" >&2; exit 1; }
read -r uid gid <<<"$ids"
# The EFI system partition at /efi: updates write the other slot's kernel, initrd and boot
# entry there, and the health check blesses the running one.
if ! grep -q '^PARTLABEL=rv-esp ' "$rootfs/etc/fstab"; then
	printf 'PARTLABEL=rv-esp     /efi                vfat   rw,noatime,uid=%s,gid=%s,umask=0077,nofail  0  0\n' \
		"$uid" "$gid" >>"$rootfs/etc/fstab"
fi
