#!/usr/bin/env bash
# mmdebstrap's customize hook for the appliance root: image/build.sh runs it as
#   customize.sh ROOTFS BINARY VERSION UPDATE_PUBLIC_KEY
# after every package is installed. It puts the binary and image/overlay/ in place, makes the
# service user, finishes the root with finish-rootfs.sh (shared with the Buildroot tree), and
# enables the units of the overlay's preset file: the daemon, its console banner, the network
# settings, networkd with DHCP, resolved and timesyncd; no login prompts (there is no password
# to log in with) and no first-boot questions.
set -euo pipefail
rootfs=$1 bin=$2 version=$3 pubkey=$4
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

install -D -m 0755 "$bin" "$rootfs/usr/bin/rackvault"
cp -a "$here/overlay/." "$rootfs/"
chroot "$rootfs" useradd --system --user-group --home-dir /var/lib/rackvault --no-create-home \
	--shell /usr/sbin/nologin --comment "rackvault appliance daemon" rackvault
# What both builds (this one and Buildroot's) do alike: version, update key, /efi.
"$here/finish-rootfs.sh" "$rootfs" "$version" "$pubkey"
# Root has no password (locked), so nobody logs in on the console; there is no SSH server.
chroot "$rootfs" passwd --lock root >/dev/null

# The units the overlay's preset file enables (Buildroot applies the same file).
mapfile -t units < <(awk '$1 == "enable" { print $2 }' "$here/overlay/usr/lib/systemd/system-preset/20-rackvault.preset")
systemctl --root="$rootfs" enable --quiet "${units[@]}"
for unit in getty@.service serial-getty@.service autovt@.service systemd-firstboot.service \
	apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service; do
	ln -sfn /dev/null "$rootfs/etc/systemd/system/$unit"
done

# Each boot of the read-only root gets a fresh machine id in memory.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/var/lib/dbus/machine-id"
