#!/usr/bin/env bash
# start-tgt-disk.sh - iSCSI disk targets (tgtd, Debian package "tgt", user space) on loopback,
# for the ingest tests and benchmarks:
#   tid 1  iqn.2024-01.test.rackvault:disk      LUN 1 = disk0.img, no authentication
#   tid 2  iqn.2024-01.test.rackvault:chapdisk  LUN 1 = disk0.img, CHAP (initiator user only)
#   tid 3  iqn.2024-01.test.rackvault:mutual    LUN 1 = disk0.img, CHAP + mutual CHAP
#   tid 4  iqn.2024-01.test.rackvault:thin      LUN 1 = thin.img, sparse, thin_provisioning=1
#                                               (READ CAPACITY(16) LBPME, GET LBA STATUS)
#   tid 5  iqn.2024-01.test.rackvault:nodigests LUN 1 = disk0.img, no digests offered (tgt's
#                                               default): an initiator gets None whatever it asks
#   tid 6  iqn.2024-01.test.rackvault:acl       LUN 1 = disk0.img, its ACL allows only the
#                                               initiator name iqn.2024-01.test.rackvault:other
# The other targets offer CRC32C digests, and tgt turns them on whenever the initiator's list
# holds CRC32C. tgt cannot *require* digests: it always accepts None too (its HeaderDigest and
# DataDigest values always include None), so a target that refuses None is not in this set.
# disk0.img is RV_TGT_DISK_SIZE_MB of random data; thin.img is RV_TGT_THIN_SIZE_MB with data
# only in a few ranges (listed in $DIR/thin.layout as "offset length" lines, in bytes).
# Portals 127.0.0.1:$PORT and [::1]:$PORT.  URLs (libiscsi syntax) go to $DIR/env.
#
# Environment (all optional):
#   RV_TGT_DISK_DIR (default $RV_PEERS_ROOT/tgt-disk)  RV_TGT_DISK_PORT (3261)
#   RV_TGT_DISK_CTL (31: tgtd control socket /run/tgtd/socket.31; unique per tgtd)
#   RV_TGT_DISK_SIZE_MB (256)  RV_TGT_THIN_SIZE_MB (1024)
#   RV_TGT_CHAP_USER / RV_TGT_CHAP_PASS      (backupuser / Secret12345678)
#   RV_TGT_MUTUAL_USER / RV_TGT_MUTUAL_PASS  (tgtout / OutSecret123456)
# Usage: start-tgt-disk.sh [--install-only]      Needs root.  Stop with stop-tgt-disk.sh.
set -euo pipefail
RV_NAME=start-tgt-disk
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${RV_TGT_DISK_DIR:-$RV_PEERS_ROOT/tgt-disk}
PORT=${RV_TGT_DISK_PORT:-3261}
CTL=${RV_TGT_DISK_CTL:-31}
SIZE_MB=${RV_TGT_DISK_SIZE_MB:-256}
THIN_MB=${RV_TGT_THIN_SIZE_MB:-1024}
CHAP_USER=${RV_TGT_CHAP_USER:-backupuser}
CHAP_PASS=${RV_TGT_CHAP_PASS:-Secret12345678}
MUT_USER=${RV_TGT_MUTUAL_USER:-tgtout}
MUT_PASS=${RV_TGT_MUTUAL_PASS:-OutSecret123456}
IQN_OPEN=iqn.2024-01.test.rackvault:disk
IQN_CHAP=iqn.2024-01.test.rackvault:chapdisk
IQN_MUTUAL=iqn.2024-01.test.rackvault:mutual
IQN_THIN=iqn.2024-01.test.rackvault:thin
IQN_NODIGESTS=iqn.2024-01.test.rackvault:nodigests
IQN_ACL=iqn.2024-01.test.rackvault:acl
ACL_INITIATOR=iqn.2024-01.test.rackvault:other

rv_require_root
rv_apt_install tgt libiscsi-bin
[[ ${1:-} == --install-only ]] && exit 0

mkdir -p "$DIR"
PIDF=$DIR/tgtd.pid
if rv_pid_alive "$PIDF"; then rv_log "already running, pid $(<"$PIDF")"; cat "$DIR/env"; exit 0; fi
rv_require_free_tcp_ports "$PORT"
[[ -S /run/tgtd/socket.$CTL ]] && ss -Hlx | grep -q "/run/tgtd/socket.$CTL " &&
	rv_die "tgtd control socket index $CTL is used by another tgtd (set RV_TGT_DISK_CTL)"

# ---- backing files ---------------------------------------------------------------------
IMG=$DIR/disk0.img
if [[ ! -f $IMG || $(stat -c %s "$IMG") -ne $((SIZE_MB * 1048576)) ]]; then
	rv_log "creating ${SIZE_MB} MiB backing file $IMG"
	head -c $((SIZE_MB * 1048576)) /dev/urandom >"$IMG.tmp"
	mv "$IMG.tmp" "$IMG"
	sha256sum "$IMG" | cut -d' ' -f1 >"$IMG.sha256"
fi
# thin LUN: data at 1 MiB (4 MiB long), at 300 MiB (1 MiB), and the last 64 KiB; holes elsewhere
THIN=$DIR/thin.img
if [[ ! -f $THIN.sha256 || $(stat -c %s "$THIN" 2>/dev/null || echo 0) -ne $((THIN_MB * 1048576)) ]]; then
	rm -f "$THIN" "$THIN.sha256" "$DIR/thin.layout"
	truncate -s $((THIN_MB * 1048576)) "$THIN"
	thin_put() { head -c "$2" /dev/urandom | dd of="$THIN" bs=64K seek=$(($1 / 65536)) conv=notrunc status=none; echo "$1 $2" >>"$DIR/thin.layout"; }
	thin_put $((1 << 20)) $((4 << 20))
	thin_put $((300 << 20)) $((1 << 20))
	thin_put $((THIN_MB * 1048576 - 65536)) 65536
	sha256sum "$THIN" | cut -d' ' -f1 >"$THIN.sha256"
fi

# ---- tgtd in foreground mode, detached ----------------------------------------------------
rm -f "/run/tgtd/socket.$CTL" "/run/tgtd/socket.$CTL.lock"
rv_spawn "$PIDF" "$DIR/tgtd.log" tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT"
PID=$RV_SPAWNED_PID
trap 'rv_log "setup failed - stopping pid $PID"; kill -KILL "$PID" 2>/dev/null; rm -f "$PIDF" "$PIDF.stime"' ERR
T=(tgtadm -C "$CTL" --lld iscsi)
RV_WAIT_PIDFILE=$PIDF rv_wait 10 "${T[@]}" --op show --mode target ||
	{ cat "$DIR/tgtd.log" >&2; false; }
if ip -6 addr show dev lo 2>/dev/null | grep -q 'inet6 ::1/'; then
	"${T[@]}" --op new --mode portal --param "portal=[::1]:$PORT"
fi

# new_target TID IQN IMAGE SERIAL [EXTRA_PARAMS]   (no initiator may log in until it is bound)
new_target() {
	"${T[@]}" --op new --mode target --tid "$1" -T "$2"
	"${T[@]}" --op new --mode logicalunit --tid "$1" --lun 1 -b "$3"
	"${T[@]}" --op update --mode logicalunit --tid "$1" --lun 1 \
		--params "vendor_id=RVTEST,product_id=VMDISK0,scsi_sn=$4${5:+,$5}"
}
new_target 1 "$IQN_OPEN" "$IMG" DISK0001
new_target 2 "$IQN_CHAP" "$IMG" DISK0002
new_target 3 "$IQN_MUTUAL" "$IMG" DISK0003
new_target 4 "$IQN_THIN" "$THIN" THIN0001 thin_provisioning=1
new_target 5 "$IQN_NODIGESTS" "$IMG" DISK0005
new_target 6 "$IQN_ACL" "$IMG" DISK0006
for tid in 1 2 3 4 5; do
	"${T[@]}" --op bind --mode target --tid "$tid" -I ALL
done
# The ACL of tid 6 names one initiator, not ours; tgt refuses others with status 0x0203.
"${T[@]}" --op bind --mode target --tid 6 --initiator-name "$ACL_INITIATOR"
# All but tid 5 offer CRC32C digests: an initiator that asks for None still gets None.
for tid in 1 2 3 4 6; do
	"${T[@]}" --op update --mode target --tid "$tid" --name HeaderDigest --value CRC32C,None
	"${T[@]}" --op update --mode target --tid "$tid" --name DataDigest --value CRC32C,None
done
"${T[@]}" --op new --mode account --user "$CHAP_USER" --password "$CHAP_PASS"
"${T[@]}" --op bind --mode account --tid 2 --user "$CHAP_USER"
"${T[@]}" --op bind --mode account --tid 3 --user "$CHAP_USER"
"${T[@]}" --op new --mode account --user "$MUT_USER" --password "$MUT_PASS"
"${T[@]}" --op bind --mode account --tid 3 --user "$MUT_USER" --outgoing

# ---- wait until an initiator can log in ----------------------------------------------------
RV_WAIT_PIDFILE=$PIDF rv_wait 10 iscsi-inq "iscsi://127.0.0.1:$PORT/$IQN_OPEN/1" ||
	{ rv_log "target does not answer"; false; }
trap - ERR

rv_env_open "$DIR/env"
rv_env RV_TGT_DISK_PID "$PID"
rv_env RV_TGT_DISK_PORT "$PORT"
rv_env RV_TGT_DISK_CTL "$CTL"
rv_env RV_TGT_DISK_PORTAL "127.0.0.1:$PORT"
rv_env RV_TGT_DISK_IQN "$IQN_OPEN"
rv_env RV_TGT_DISK_CHAP_IQN "$IQN_CHAP"
rv_env RV_TGT_DISK_MUTUAL_IQN "$IQN_MUTUAL"
rv_env RV_TGT_DISK_THIN_IQN "$IQN_THIN"
rv_env RV_TGT_DISK_NODIGESTS_IQN "$IQN_NODIGESTS"
rv_env RV_TGT_DISK_ACL_IQN "$IQN_ACL"
rv_env RV_TGT_DISK_ACL_INITIATOR "$ACL_INITIATOR"
rv_env RV_TGT_DISK_LUN 1
rv_env RV_TGT_DISK_CHAP_USER "$CHAP_USER"
rv_env RV_TGT_DISK_CHAP_PASS "$CHAP_PASS"
rv_env RV_TGT_DISK_MUTUAL_USER "$MUT_USER"
rv_env RV_TGT_DISK_MUTUAL_PASS "$MUT_PASS"
rv_env RV_TGT_DISK_SIZE_BYTES $((SIZE_MB * 1048576))
rv_env RV_TGT_DISK_IMG "$IMG"
rv_env RV_TGT_DISK_SHA256 "$(<"$IMG.sha256")"
rv_env RV_TGT_DISK_THIN_IMG "$THIN"
rv_env RV_TGT_DISK_THIN_BYTES $((THIN_MB * 1048576))
rv_env RV_TGT_DISK_THIN_SHA256 "$(<"$THIN.sha256")"
rv_env RV_TGT_DISK_THIN_LAYOUT "$DIR/thin.layout"
rv_env_close
rv_log "tgtd pid $PID on 127.0.0.1:$PORT (control socket $CTL)"
cat "$DIR/env"
