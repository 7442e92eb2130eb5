#!/usr/bin/env bash
# stop-s3.sh - part of the rackvault test harness (tests/peers/): stop the SeaweedFS started by start-s3.sh (by its PID file only).  A clean
# SIGTERM shutdown takes ~17 s (its filer waits 15 s for gRPC streams); KILL follows after
# RV_S3_STOP_TIMEOUT (30) s.  Removes the fixed-path gRPC unix sockets SeaweedFS leaves in /tmp
# for this instance's ports.  RV_S3_PURGE=1 also removes the working directory (objects).
set -uo pipefail
RV_NAME=stop-s3
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DIR=${RV_S3_DIR:-$RV_PEERS_ROOT/s3}
PORT=${RV_S3_PORT:-18333}
[[ -r $DIR/env ]] && PORT=$(sed -n "s/^RV_S3_PORT='\(.*\)'$/\1/p" "$DIR/env")
[[ -e $DIR/weed.pid ]] || { rv_log "nothing to stop ($DIR/weed.pid missing)"; exit 0; }
rv_stop_pidfile "$DIR/weed.pid" "${RV_S3_STOP_TIMEOUT:-30}" || exit 1
for s in "master-grpc-$((PORT + 3))" "volume-grpc-$((PORT + 5))" "filer-grpc-$((PORT + 7))" "s3-grpc-$((PORT + 1))"; do
	f=/tmp/seaweedfs-$s.sock
	[[ -S $f ]] && ! ss -Hlx | grep -q "$f " && rm -f "$f"
done
rm -f "$DIR/env" "$DIR/filer.sock" "$DIR/s3.sock"
[[ ${RV_S3_PURGE:-0} == 1 ]] && rm -rf "$DIR"
exit 0
