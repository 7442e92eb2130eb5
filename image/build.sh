#!/usr/bin/env bash
# Build the bootable appliance image, offline from Debian's packages plus our static binary.
#
#   image/build.sh [--out DIR] [--version V] [--suite bookworm] [--mirror URL]
#                  [--update-key PUB] [--signing-key KEY] [--also-bundle V2]
#
# Update keys (see image/README.md, "Signing"): --update-key is the public key (hex, from
# `rackvault update keygen`) built into the image, which then accepts only bundles signed with
# its private key; --signing-key is that private key, given on the signing host only, to also
# write the signed update bundle rackvault-<V>.rvu. Without either, a development key pair is
# made once in DIR/dev-update-key{,.pub} and used for both: never ship such an image.
# --also-bundle V2 also writes rackvault-V2.rvu: the same system saying version V2, an update
# to install on this image (the image test applies it).
#
# Produces, in DIR (default target/image):
#   rackvault-<V>.img     a raw GPT disk: write it to a disk (dd) or boot it in qemu
#   rackvault-<V>.qcow2   the same disk as qcow2, to import as a VM
#   rackvault-<V>.root    the root filesystem (erofs) the image's slot A holds
#   rackvault-<V>.rvu     the signed update bundle of this build (root, kernel, initrd),
#                         when a signing key is at hand
#   boot/                 the kernel and initrd that go with it
#
# Steps (see image/README.md for the disk layout and the boot):
#   1. cargo builds rackvault for x86_64-unknown-linux-musl: one static binary;
#   2. mmdebstrap builds a minimal Debian root (systemd, the kernel, an initramfs with erofs)
#      from the package registry, with image/overlay/ on top and the binary in /usr/bin;
#   3. the root becomes a read-only erofs image;
#   4. image/assemble-disk.sh (shared with the Buildroot tree) lays out the GPT disk: the
#      kernel and initrd go to the EFI system partition with systemd-boot, the partition
#      images are written at their offsets, so nothing here needs loop devices or mounts.
# Needs root (mmdebstrap's root mode) or working user namespaces (its unshare mode), and the
# Debian packages listed in NEEDS below; it installs those that are missing when run as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

out=$root/target/image
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
suite=bookworm
mirror=
update_key= signing_key= also_bundle=
while (($#)); do
	case $1 in
	--out) out=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	--suite) suite=$2; shift 2 ;;
	--mirror) mirror=$2; shift 2 ;;
	--update-key) update_key=$2; shift 2 ;;
	--signing-key) signing_key=$2; shift 2 ;;
	--also-bundle) also_bundle=$2; shift 2 ;;
	-h | --help) sed -n '2,34p' "$0"; exit 0 ;;
	*) echo "image/build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
[[ -n $version ]] || { echo "image/build.sh: no version found in Cargo.toml; give --version" >&2; exit 2; }

# The partition sizes are image/assemble-disk.sh's.
# The static binary's size budget (stripped), checked below.
BINARY_BUDGET_MIB=24

NEEDS=(mmdebstrap musl-tools erofs-utils dosfstools mtools fdisk e2fsprogs qemu-utils uidmap)
missing=()
for p in "${NEEDS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	if ((EUID != 0)); then
		echo "image/build.sh: install ${missing[*]} first (apt-get install ${missing[*]})" >&2
		exit 1
	fi
	echo "image/build.sh: installing ${missing[*]}" >&2
	DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 install "${missing[@]}" >/dev/null
fi

say() { printf 'image/build.sh: %s\n' "$*" >&2; }
started=$SECONDS
mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

# 1. The binary.
say "building rackvault $version for x86_64-unknown-linux-musl"
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
	rustup target add x86_64-unknown-linux-musl >&2
fi
cargo build --release --quiet --target x86_64-unknown-linux-musl -p rackvault
bin=$work/rackvault
cp target/x86_64-unknown-linux-musl/release/rackvault "$bin"
strip "$bin"
bin_bytes=$(stat -c %s "$bin")
say "binary: $((bin_bytes / 1024)) KiB stripped (budget ${BINARY_BUDGET_MIB} MiB)"
if ((bin_bytes > BINARY_BUDGET_MIB * 1024 * 1024)); then
	say "the static binary is over its size budget of ${BINARY_BUDGET_MIB} MiB: find what grew (cargo bloat) before raising it"
	exit 1
fi

# The update key built into the image, and the key that signs this build's bundle.
if [[ -z $update_key && -z $signing_key ]]; then
	if [[ ! -e $out/dev-update-key ]]; then
		"$bin" update keygen --out "$out/dev-update-key" >/dev/null
	fi
	update_key=$out/dev-update-key.pub signing_key=$out/dev-update-key
	say "using the development update key $update_key: an image for real use is built with --update-key"
elif [[ -z $update_key ]]; then
	say "--signing-key needs --update-key too (the public key the image will trust)"
	exit 2
fi
pubkey=$(tr -d '[:space:]' <"$update_key")
[[ $pubkey =~ ^[0-9a-f]{64}$ ]] || { say "$update_key does not hold a public key (64 hex digits)"; exit 2; }

# 2. The root filesystem.
say "building the $suite root with mmdebstrap"
mode=root
((EUID == 0)) || mode=unshare
packages=systemd,systemd-sysv,udev,systemd-timesyncd,systemd-resolved,linux-image-amd64,initramfs-tools,zstd,kmod,e2fsprogs,iproute2,ca-certificates,tzdata,systemd-boot-efi
rootfs=$work/rootfs
mm=(mmdebstrap --quiet --variant=minbase --mode="$mode" --include="$packages"
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--setup-hook='mkdir -p "$1/etc/initramfs-tools"'
	--setup-hook="cp -a $root/image/overlay/etc/initramfs-tools/. \"\$1/etc/initramfs-tools/\""
	--customize-hook="$root/image/customize.sh \"\$1\" $bin $version $pubkey")
"${mm[@]}" "$suite" "$rootfs" ${mirror:+"$mirror"} >&2

# Written after mmdebstrap, not by the customize hook: mmdebstrap puts the build host's
# /etc/hostname and /etc/resolv.conf in place for the build and handles them when it ends.
printf 'rackvault\n' >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 rackvault\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"

# 3. The partitions' contents.
kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n1)
mkdir -p "$out/boot"
cp "$kernel" "$out/boot/vmlinuz"
cp "$initrd" "$out/boot/initrd.img"
efi=$rootfs/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[[ -f $efi ]] || { say "systemd-boot is missing from the root ($efi)"; exit 1; }
cp "$efi" "$work/systemd-bootx64.efi"
# The root slot holds no kernel (it is on the EFI partition) and no package caches.
rm -rf "$rootfs"/boot/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
say "making the read-only root (erofs, lz4hc)"
root_img=$out/rackvault-$version.root
rm -f "$root_img"
# -T0: every file's time is the epoch, so the same packages make the same image.
mkfs.erofs -zlz4hc -T0 "$root_img" "$rootfs" >/dev/null
root_bytes=$(stat -c %s "$root_img")

say "laying out the GPT disk (image/assemble-disk.sh, shared with the Buildroot tree)"
img=$out/rackvault-$version.img
owner=$(awk -F: '$1 == "rackvault" { print $3 ":" $4 }' "$rootfs/etc/passwd")
[[ -n $owner ]] || { say "the root has no rackvault user"; exit 1; }
"$root/image/assemble-disk.sh" --out "$img" --root "$root_img" --kernel "$out/boot/vmlinuz" \
	--initrd "$out/boot/initrd.img" --efi "$work/systemd-bootx64.efi" --owner "$owner" --version "$version"
if [[ -n $signing_key ]]; then
	say "signing the update bundle"
	rm -f "$out/rackvault-$version.rvu"
	"$bin" update bundle --key "$signing_key" --version "$version" --root "$root_img" \
		--kernel "$out/boot/vmlinuz" --initrd "$out/boot/initrd.img" --out "$out/rackvault-$version.rvu" >/dev/null
	"$bin" update verify "$out/rackvault-$version.rvu" --public-key "$update_key" >/dev/null
	if [[ -n $also_bundle ]]; then
		say "signing an update bundle that says version $also_bundle"
		printf '%s\n' "$also_bundle" >"$rootfs/usr/lib/rackvault/version"
		mkfs.erofs -zlz4hc -T0 "$work/root2.img" "$rootfs" >/dev/null
		rm -f "$out/rackvault-$also_bundle.rvu"
		"$bin" update bundle --key "$signing_key" --version "$also_bundle" --root "$work/root2.img" \
			--kernel "$out/boot/vmlinuz" --initrd "$out/boot/initrd.img" --out "$out/rackvault-$also_bundle.rvu" >/dev/null
		printf '%s\n' "$version" >"$rootfs/usr/lib/rackvault/version"
	fi
elif [[ -n $also_bundle ]]; then
	say "--also-bundle needs the signing key (--signing-key, or the development key)"
	exit 2
fi
say "converting to qcow2"
qemu-img convert -f raw -O qcow2 "$img" "$out/rackvault-$version.qcow2"
ln -sfn "rackvault-$version.img" "$out/rackvault.img"
ln -sfn "rackvault-$version.qcow2" "$out/rackvault.qcow2"
ln -sfn "rackvault-$version.root" "$out/rackvault.root"
printf '%s\n' "$version" >"$out/VERSION"
say "done in $((SECONDS - started)) s: $img ($(du -h --apparent-size "$img" | cut -f1) raw, $(du -h "$out/rackvault-$version.qcow2" | cut -f1) qcow2; root $((root_bytes >> 20)) MiB, binary $((bin_bytes >> 20)) MiB)"
