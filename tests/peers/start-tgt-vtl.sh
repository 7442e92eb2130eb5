#!/usr/bin/env bash
# start-tgt-vtl.sh - part of the rackvault test harness (tests/peers/): iSCSI virtual tape library (tgtd, Debian package "tgt") on loopback:
# one target with N tape drives (SSC emulation, bstype ssc) and one media changer (SMC
# emulation) holding barcoded virtual cartridges.
#
#   target      iqn.2024-01.test.rackvault:vtl on 127.0.0.1:$PORT and [::1]:$PORT
#   LUN 1..N    tape drives, empty at start, serials DRV00001..     (N = RV_TGT_VTL_DRIVES)
#   LUN N+1     media changer, serial CHGR0001
#   elements    picker 1 | mail slots 10.. | drives 500.. | storage slots 1000..
#   cartridges  TST001L6..TST00nL6 (TAPE_MB each) in slots 1000..; then EOM001L6 (EOM_MB,
#               tiny, for end-of-medium tests) and CLN001L1 (cleaning cartridge)
#   media files $DIR/media/<barcode> (tgtimg format), recreated on every start unless
#               RV_TGT_VTL_KEEP_MEDIA=1.  The changer inventory lives only in tgtd memory.
# Used by the tape/drive and tape/changer integration tests (set -a; source $DIR/env).
# See ../shared/peers/TGT-SCSI-NOTES.md for what tgt's SSC/SMC emulation does and does not implement.
#
# Environment (all optional):
#   RV_TGT_VTL_DIR (default $RV_PEERS_ROOT/tgt-vtl; keep it short: tgt limits
#   "<media_home>/<barcode>" to 127 characters)   RV_TGT_VTL_PORT (3262)   RV_TGT_VTL_CTL (32)
#   RV_TGT_VTL_DRIVES (2)  RV_TGT_VTL_SLOTS (10)  RV_TGT_VTL_TAPES (4)  RV_TGT_VTL_TAPE_MB (256)
#   RV_TGT_VTL_EOM_MB (2)  RV_TGT_VTL_MAILSLOTS (2)  RV_TGT_VTL_KEEP_MEDIA (0)
#   RV_TGT_VTL_VENDOR (RVTEST)  RV_TGT_VTL_DRIVE_PRODUCT (VTAPE-LTO)  RV_TGT_VTL_CHANGER_PRODUCT (VCHANGER)
# Usage: start-tgt-vtl.sh [--install-only]      Needs root.  Stop with stop-tgt-vtl.sh.
set -euo pipefail
RV_NAME=start-tgt-vtl
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${RV_TGT_VTL_DIR:-$RV_PEERS_ROOT/tgt-vtl}
PORT=${RV_TGT_VTL_PORT:-3262}
CTL=${RV_TGT_VTL_CTL:-32}
NDRV=${RV_TGT_VTL_DRIVES:-2}
NSLOT=${RV_TGT_VTL_SLOTS:-10}
NTAPE=${RV_TGT_VTL_TAPES:-4}
TAPE_MB=${RV_TGT_VTL_TAPE_MB:-256}
EOM_MB=${RV_TGT_VTL_EOM_MB:-2}
NMAIL=${RV_TGT_VTL_MAILSLOTS:-2}
VENDOR=${RV_TGT_VTL_VENDOR:-RVTEST}
DRV_PRODUCT=${RV_TGT_VTL_DRIVE_PRODUCT:-VTAPE-LTO}
CHG_PRODUCT=${RV_TGT_VTL_CHANGER_PRODUCT:-VCHANGER}
IQN=iqn.2024-01.test.rackvault:vtl
MEDIA=$DIR/media
PICKER=1 MAIL_BASE=10 DRV_BASE=500 SLOT_BASE=1000

rv_require_root
rv_apt_install tgt libiscsi-bin
[[ ${1:-} == --install-only ]] && exit 0
((NTAPE + 2 <= NSLOT)) || rv_die "need RV_TGT_VTL_SLOTS >= RV_TGT_VTL_TAPES + 2"
((${#MEDIA} + 10 < 127)) || rv_die "RV_TGT_VTL_DIR too long for tgt's 128-byte media path"

mkdir -p "$MEDIA"
PIDF=$DIR/tgtd.pid
if rv_pid_alive "$PIDF"; then rv_log "already running, pid $(<"$PIDF")"; cat "$DIR/env"; exit 0; fi
rv_require_free_tcp_ports "$PORT"
[[ -S /run/tgtd/socket.$CTL ]] && ss -Hlx | grep -q "/run/tgtd/socket.$CTL " &&
	rv_die "tgtd control socket index $CTL is used by another tgtd (set RV_TGT_VTL_CTL)"

# ---- virtual cartridges --------------------------------------------------------------------
BARCODES=()
for i in $(seq 1 "$NTAPE"); do BARCODES+=("$(printf 'TST%03dL6' "$i")"); done
mk_tape() { # barcode size_MB type
	[[ ${RV_TGT_VTL_KEEP_MEDIA:-0} == 1 && -f $MEDIA/$1 ]] && return 0
	rm -f "$MEDIA/$1"
	tgtimg --op new --device-type tape --barcode "$1" --size "$2" --type "$3" --file "$MEDIA/$1" >/dev/null
}
for b in "${BARCODES[@]}"; do mk_tape "$b" "$TAPE_MB" data; done
mk_tape EOM001L6 "$EOM_MB" data
mk_tape CLN001L1 1 clean
dd if=/dev/zero of="$DIR/smc" bs=1k count=1 status=none   # changer backing store (required, unused)

# ---- tgtd ------------------------------------------------------------------------------------
rm -f "/run/tgtd/socket.$CTL" "/run/tgtd/socket.$CTL.lock"
rv_spawn "$PIDF" "$DIR/tgtd.log" tgtd -f -C "$CTL" --iscsi "portal=127.0.0.1:$PORT"
PID=$RV_SPAWNED_PID
trap 'rv_log "setup failed - stopping pid $PID"; kill -KILL "$PID" 2>/dev/null; rm -f "$PIDF" "$PIDF.stime"' ERR
T=(tgtadm -C "$CTL" --lld iscsi)
RV_WAIT_PIDFILE=$PIDF rv_wait 10 "${T[@]}" --op show --mode target ||
	{ cat "$DIR/tgtd.log" >&2; false; }

"${T[@]}" --op new --mode portal --param "portal=[::1]:$PORT"
"${T[@]}" --op new --mode target --tid 1 -T "$IQN"
# tape drives without backing store: "medium not present" until the changer loads one
for d in $(seq 1 "$NDRV"); do
	"${T[@]}" --op new --mode logicalunit --tid 1 --lun "$d" --device-type tape --bstype ssc
	"${T[@]}" --op update --mode logicalunit --tid 1 --lun "$d" \
		--params "vendor_id=$VENDOR,product_id=$DRV_PRODUCT,product_rev=0001,scsi_sn=$(printf 'DRV%05d' "$d")"
done
CL=$((NDRV + 1))
"${T[@]}" --op new --mode logicalunit --tid 1 --lun "$CL" --device-type changer -b "$DIR/smc"
P=("${T[@]}" --op update --mode logicalunit --tid 1 --lun "$CL" --params)
"${P[@]}" "vendor_id=$VENDOR,product_id=$CHG_PRODUCT,product_rev=0001,scsi_sn=CHGR0001"
"${P[@]}" "media_home=$MEDIA"
"${P[@]}" "element_type=1,start_address=$PICKER,quantity=1"
"${P[@]}" "element_type=2,start_address=$SLOT_BASE,quantity=$NSLOT"
"${P[@]}" "element_type=3,start_address=$MAIL_BASE,quantity=$NMAIL"
"${P[@]}" "element_type=4,start_address=$DRV_BASE,quantity=$NDRV"
for d in $(seq 1 "$NDRV"); do
	"${P[@]}" "element_type=4,address=$((DRV_BASE + d - 1)),tid=1,lun=$d"
done
slot=$SLOT_BASE
for b in "${BARCODES[@]}" EOM001L6 CLN001L1; do
	"${P[@]}" "element_type=2,address=$slot,barcode=$b,sides=1"
	slot=$((slot + 1))
done
"${T[@]}" --op bind --mode target --tid 1 -I ALL

chk() { iscsi-ls -s "iscsi://127.0.0.1:$PORT" | grep -q MEDIA_CHANGER; }
RV_WAIT_PIDFILE=$PIDF rv_wait 10 chk || { rv_log "VTL does not answer"; false; }
trap - ERR

rv_env_open "$DIR/env"
rv_env RV_TGT_VTL_PID "$PID"
rv_env RV_TGT_VTL_PORT "$PORT"
rv_env RV_TGT_VTL_CTL "$CTL"
rv_env RV_TGT_VTL_PORTAL "127.0.0.1:$PORT"
rv_env RV_TGT_VTL_IQN "$IQN"
rv_env RV_TGT_VTL_URL "iscsi://127.0.0.1:$PORT/$IQN"
rv_env RV_TGT_VTL_URL6 "iscsi://[::1]:$PORT/$IQN"
rv_env RV_TGT_VTL_DRIVE_LUNS "$(seq -s' ' 1 "$NDRV")"
rv_env RV_TGT_VTL_CHANGER_LUN "$CL"
rv_env RV_TGT_VTL_PICKER_ADDR "$PICKER"
rv_env RV_TGT_VTL_MAIL_ADDRS "$(seq -s' ' "$MAIL_BASE" $((MAIL_BASE + NMAIL - 1)))"
rv_env RV_TGT_VTL_DRIVE_ADDRS "$(seq -s' ' "$DRV_BASE" $((DRV_BASE + NDRV - 1)))"
rv_env RV_TGT_VTL_SLOT_ADDRS "$(seq -s' ' "$SLOT_BASE" $((SLOT_BASE + NSLOT - 1)))"
rv_env RV_TGT_VTL_BARCODES "${BARCODES[*]}"
rv_env RV_TGT_VTL_BARCODE_SLOTS "$(seq -s' ' "$SLOT_BASE" $((SLOT_BASE + NTAPE - 1)))"
rv_env RV_TGT_VTL_EOM_BARCODE EOM001L6
rv_env RV_TGT_VTL_EOM_SLOT $((SLOT_BASE + NTAPE))
rv_env RV_TGT_VTL_EOM_BYTES $((EOM_MB * 1048576))
rv_env RV_TGT_VTL_CLEANING_BARCODE CLN001L1
rv_env RV_TGT_VTL_CLEANING_SLOT $((SLOT_BASE + NTAPE + 1))
rv_env RV_TGT_VTL_TAPE_BYTES $((TAPE_MB * 1048576))
rv_env RV_TGT_VTL_DRIVE_SERIALS "$(for d in $(seq 1 "$NDRV"); do printf 'DRV%05d ' "$d"; done | sed 's/ $//')"
rv_env RV_TGT_VTL_MEDIA_DIR "$MEDIA"
rv_env_close
rv_log "tgtd pid $PID: VTL on 127.0.0.1:$PORT / [::1]:$PORT, $NDRV drives (LUN 1-$NDRV), changer LUN $CL"
cat "$DIR/env"
