#!/usr/bin/env bash
# Lays out the appliance's GPT disk from a root filesystem image and its kernel: the same
# layout for both builds, image/build.sh (Debian) and the Buildroot tree's post-image script.
#
#   assemble-disk.sh --out IMG --root ROOT_IMG --kernel KERNEL [--initrd INITRD]
#                    --efi SYSTEMD_BOOT_EFI --owner UID:GID --version V
#
# The disk (see image/README.md):
#   rv-esp     256 MiB  EFI system partition: systemd-boot, loader.conf, slot A's kernel,
#                       initrd and boot entry (generation 1)
#   rv-root-a  1 GiB    ROOT_IMG, read-only
#   rv-root-b  1 GiB    empty until the first update
#   rv-data    256 MiB  ext4 owned by UID:GID (the service user), grown to fill the disk at
#                       the first boot
# Without --initrd the kernel mounts the root itself (it needs erofs and its disk driver
# built in) and the entry says `rootwait`. Needs mkfs.vfat, mtools, mkfs.ext4 and sfdisk; no
# loop devices, mounts or root.
set -euo pipefail
out='' root_img='' kernel='' initrd='' efi='' owner='' version=''
while (($#)); do
	case $1 in
	--out) out=$2; shift 2 ;;
	--root) root_img=$2; shift 2 ;;
	--kernel) kernel=$2; shift 2 ;;
	--initrd) initrd=$2; shift 2 ;;
	--efi) efi=$2; shift 2 ;;
	--owner) owner=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	*) echo "assemble-disk.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
for v in out root_img kernel efi owner version; do
	[[ -n ${!v} ]] || { echo "assemble-disk.sh: --${v%_img} is required" >&2; exit 2; }
done

# Partition sizes, in MiB. The slots are sized for updates to grow into; the data partition
# is small in the image and grows to fill the disk at the first boot.
ESP_MIB=256
SLOT_MIB=1024
DATA_MIB=256

root_bytes=$(stat -c %s "$root_img")
if ((root_bytes > SLOT_MIB * 1024 * 1024)); then
	echo "assemble-disk.sh: the root filesystem ($((root_bytes >> 20)) MiB) does not fit a ${SLOT_MIB} MiB slot" >&2
	exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

esp=$work/esp.img
mkfs.vfat -C -F 32 -n RV-ESP "$esp" $((ESP_MIB * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/rackvault ::/rackvault/a
mcopy -i "$esp" "$efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$kernel" ::/rackvault/a/vmlinuz
# The boot loader starts the entry with the highest `version` (the update generation: 1 for
# this build, one more for each update applied) among those its boot counter has not marked
# bad; an update's entry is tried 3 times (see firmware/service/src/update.rs). `panic=5`
# reboots from a root that does not mount, which counts as a failed try.
printf 'default rackvault-*\ntimeout 1\nconsole-mode keep\neditor no\n' >"$work/loader.conf"
mcopy -i "$esp" "$work/loader.conf" ::/loader/loader.conf
{
	printf 'title rackvault %s (slot a)\nsort-key rackvault\nversion 1\nlinux /rackvault/a/vmlinuz\n' "$version"
	if [[ -n $initrd ]]; then
		mcopy -i "$esp" "$initrd" ::/rackvault/a/initrd.img
		printf 'initrd /rackvault/a/initrd.img\n'
		wait_root=
	else
		wait_root=" rootwait"
	fi
	printf 'options root=PARTLABEL=rv-root-a rootfstype=erofs ro%s console=tty0 console=ttyS0,115200 rackvault.slot=a panic=5\n' "$wait_root"
} >"$work/rackvault-a.conf"
mcopy -i "$esp" "$work/rackvault-a.conf" ::/loader/entries/rackvault-a.conf

data=$work/data.img
mkfs.ext4 -q -F -L rv-data -E root_owner="$owner" "$data" "${DATA_MIB}M"

rm -f "$out"
truncate -s "$((1 + ESP_MIB + 2 * SLOT_MIB + DATA_MIB + 1))M" "$out"
# Types: EFI system; the discoverable-partitions "root x86-64" type for both slots; Linux
# data for the data partition. The names are what the system finds them by (PARTLABEL).
sfdisk --quiet "$out" <<EOT
label: gpt
start=1MiB, size=${ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="rv-esp"
size=${SLOT_MIB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="rv-root-a"
size=${SLOT_MIB}MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="rv-root-b"
size=${DATA_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="rv-data"
EOT
put() { # put IMAGE START_MIB
	dd if="$1" of="$out" bs=1M seek="$2" conv=notrunc,sparse status=none
}
put "$esp" 1
put "$root_img" $((1 + ESP_MIB))
put "$data" $((1 + ESP_MIB + 2 * SLOT_MIB))
