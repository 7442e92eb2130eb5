#!/usr/bin/env bash
# mmdebstrap's customize hook for the appliance root: image/build.sh runs it as
#   customize.sh ROOTFS BINARY VERSION UPDATE_PUBLIC_KEY
# after every package is installed. It puts the binary and image/overlay/ in place, makes the
# service user, and chooses which units run: the daemon, its console banner, networkd with
# DHCP, resolved and timesyncd; no login prompts (there is no password to log in with) and no
# first-boot questions.
set -euo pipefail
rootfs=$1 bin=$2 version=$3 pubkey=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

install -D -m 0755 "$bin" "$rootfs/usr/bin/rackvault"
cp -a "$here/overlay/." "$rootfs/"
install -d -m 0755 "$rootfs/usr/lib/rackvault" "$rootfs/srv" "$rootfs/var/lib/rackvault"
printf '%s\n' "$version" >"$rootfs/usr/lib/rackvault/version"
# The only key whose update bundles this image accepts.
printf '%s\n' "$pubkey" >"$rootfs/usr/lib/rackvault/update.pub"

chroot "$rootfs" useradd --system --user-group --home-dir /var/lib/rackvault --no-create-home \
	--shell /usr/sbin/nologin --comment "rackvault appliance daemon" rackvault
# The EFI system partition at /efi, writable by the daemon only: updates write the other
# slot's kernel, initrd and boot entry there, and the health check blesses the running one.
install -d -m 0755 "$rootfs/efi"
uid=$(chroot "$rootfs" id -u rackvault) gid=$(chroot "$rootfs" id -g rackvault)
printf 'PARTLABEL=rv-esp     /efi                vfat   rw,noatime,uid=%s,gid=%s,umask=0077,nofail  0  0\n' \
	"$uid" "$gid" >>"$rootfs/etc/fstab"
# Root has no password (locked), so nobody logs in on the console; there is no SSH server.
chroot "$rootfs" passwd --lock root >/dev/null

systemctl --root="$rootfs" enable --quiet rackvault.service rackvault-console.service \
	rackvault-health.service rackvault-reboot.path \
	systemd-networkd.service systemd-networkd-wait-online.service systemd-resolved.service systemd-timesyncd.service
for unit in getty@.service serial-getty@.service autovt@.service systemd-firstboot.service \
	apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service; do
	ln -sfn /dev/null "$rootfs/etc/systemd/system/$unit"
done

# Each boot of the read-only root gets a fresh machine id in memory.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
