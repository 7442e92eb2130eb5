#!/usr/bin/env bash
# Buildroot's post-image script: lays out the same GPT disk as image/build.sh, with the same
# script (image/assemble-disk.sh): the EFI system partition with systemd-boot and slot A's
# kernel, root slots A (this build's erofs) and B, and the data partition.
set -euo pipefail
binaries=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../../Cargo.toml" | head -n1)
owner=$(awk -F: '$1 == "rackvault" { print $3 ":" $4 }' "$TARGET_DIR/etc/passwd")
"$here/../../../image/assemble-disk.sh" --out "$binaries/rackvault-$version.img" \
	--root "$binaries/rootfs.erofs" --kernel "$binaries/bzImage" \
	--efi "$binaries/efi-part/EFI/BOOT/bootx64.efi" --owner "$owner" --version "$version"
