#!/usr/bin/env bash
# stop-tgt-vtl.sh - part of the rackvault test harness (tests/peers/): stop the tgtd started by start-tgt-vtl.sh (by its PID file only).
# RV_TGT_VTL_PURGE=1 also removes the working directory (media files, logs).
set -uo pipefail
RV_NAME=stop-tgt-vtl
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR=${RV_TGT_VTL_DIR:-$RV_PEERS_ROOT/tgt-vtl}
CTL=${RV_TGT_VTL_CTL:-32}
[[ -r $DIR/env ]] && CTL=$(sed -n "s/^RV_TGT_VTL_CTL='\(.*\)'$/\1/p" "$DIR/env")
[[ -e $DIR/tgtd.pid ]] || { rv_log "nothing to stop ($DIR/tgtd.pid missing)"; exit 0; }
rv_tgt_stop "$DIR/tgtd.pid" "$CTL" || exit 1
rm -f "$DIR/env"
[[ ${RV_TGT_VTL_PURGE:-0} == 1 ]] && rm -rf "$DIR"
exit 0
