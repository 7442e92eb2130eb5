#!/usr/bin/env bash
# Buildroot's post-build script: finishes the root with the same script as image/build.sh's
# Debian root (image/finish-rootfs.sh). The overlay (image/overlay/, with the units and their
# preset file) is already in place; Buildroot applies the presets when it finalizes the root.
#
# The update key the image trusts comes from the environment: RACKVAULT_UPDATE_KEY names the
# public key file (`rackvault update keygen` makes the pair; see image/README.md, "Signing").
set -euo pipefail
target=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
key=${RACKVAULT_UPDATE_KEY:-}
[[ -n $key && -r $key ]] || {
	echo "post-build.sh: set RACKVAULT_UPDATE_KEY to the update public key file the image is to trust" >&2
	exit 1
}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../../Cargo.toml" | head -n1)
"$here/../../../image/finish-rootfs.sh" "$target" "$version" "$(tr -d '[:space:]' <"$key")"
# Each boot of the read-only root gets a fresh machine id in memory.
: >"$target/etc/machine-id"
