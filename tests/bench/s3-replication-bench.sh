#!/usr/bin/env bash
# Replication to S3, side by side in one run, to the same SeaweedFS (tests/peers/start-s3.sh,
# its own instance on port 18533 with room for the data):
#   rackvault replicate NAME --to s3://BUCKET: a point of the deterministic VM disk
#     (tests/bench/gen_vmdisk.sh), backed up into a store first, pushed into a new bucket per
#     run (so everything is sent), timed wall clock, whole command (tree walk, pack objects and
#     their indexes, the point index, the bucket GC of the task is not part of the CLI);
#   boto3 upload_fileobj of the same store's pack files (the bytes the push sends, give or take
#     the record headers), from memory, with the same part size (8 MiB) and parts in flight (4).
# Prints each run, the medians and the ratio (our MiB/s over boto3's; the issue's target >= 0.9).
#
#   tests/bench/s3-replication-bench.sh              # 2 GiB, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/s3-replication-bench.sh
#   ENCRYPT=1 ...                                    # an encrypted store (records travel sealed)
# Only loopback; the SeaweedFS started here is stopped by its PID file at the end.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-2048}
RUNS=${RUNS:-3}
WORK=$(mktemp -d /tmp/rackvault-s3replbench.XXXXXX)
export RV_PEERS_ROOT=${RV_PEERS_ROOT:-/tmp/rackvault-peers}
export RV_S3_DIR=$WORK/seaweedfs RV_S3_PORT=${RV_S3_PORT:-18533}
export RV_S3_VOLUME_MB=${RV_S3_VOLUME_MB:-1024} RV_S3_MAX_VOLUMES=${RV_S3_MAX_VOLUMES:-64}
cleanup() {
	"$ROOT/tests/peers/stop-s3.sh" >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -p rackvault --quiet)
RV=$ROOT/target/release/rackvault
"$ROOT/tests/peers/start-s3.sh" >/dev/null
set -a
# shellcheck disable=SC1091
source "$RV_S3_DIR/env"
set +a
printf '%s' "$RV_S3_SECRET_KEY" >"$WORK/secret"

echo "== corpus: ${SIZE_MIB} MiB" >&2
"$HERE/gen_vmdisk.sh" create "$WORK/vm.img" "$SIZE_MIB" 42 >/dev/null
enc=()
[[ ${ENCRYPT:-0} == 1 ]] && enc=(--encrypt --key-file "$WORK/recovery.key")
"$RV" backup "$WORK/vm.img" --store "$WORK/a" --name vm --json "${enc[@]}" >"$WORK/backup.json"
keyarg=()
[[ ${ENCRYPT:-0} == 1 ]] && keyarg=(--key-file "$WORK/recovery.key")

bucket() {
	"$RV_S3_PYTHON" - "$1" <<'PY'
import os, sys
import boto3
from botocore.config import Config
E = os.environ
s3 = boto3.client("s3", endpoint_url=E["RV_S3_ENDPOINT"], region_name=E["RV_S3_REGION"],
                  aws_access_key_id=E["RV_S3_ACCESS_KEY"], aws_secret_access_key=E["RV_S3_SECRET_KEY"],
                  config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
s3.create_bucket(Bucket=sys.argv[1])
PY
}

now() { python3 -c 'import time; print(time.monotonic())'; }
declare -a OURS THEIRS
for run in $(seq 1 "$RUNS"); do
	tag=$run-$$-$(date +%s)
	bucket "rv-repl-ours-$tag"
	t0=$(now)
	"$RV" replicate vm --store "$WORK/a" "${keyarg[@]}" --to "s3://rv-repl-ours-$tag" --namespace bench \
		--endpoint "$RV_S3_ENDPOINT" --access-key "$RV_S3_ACCESS_KEY" --secret-file "$WORK/secret" --json >"$WORK/repl$run.json"
	t1=$(now)
	sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$WORK/repl$run.json")
	ours=$(python3 -c "print(round($sent / ($t1 - $t0) / 2**20, 1))")
	theirs=$("$RV_S3_PYTHON" - "rv-repl-boto3-$tag" "$WORK"/a/packs/*.pack <<'PY'
import io, os, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
E = os.environ
s3 = boto3.client("s3", endpoint_url=E["RV_S3_ENDPOINT"], region_name=E["RV_S3_REGION"],
                  aws_access_key_id=E["RV_S3_ACCESS_KEY"], aws_secret_access_key=E["RV_S3_SECRET_KEY"],
                  config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
bucket, files = sys.argv[1], [f for f in sys.argv[2:] if os.path.isfile(f)]
s3.create_bucket(Bucket=bucket)
part = 8 << 20
tc = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=part, max_concurrency=4)
data = [(os.path.basename(f), open(f, "rb").read()) for f in files]
start = time.monotonic()
total = 0
for name, d in data:
    total += len(d)
    s3.upload_fileobj(io.BytesIO(d), bucket, "packs/" + name, Config=tc)
secs = time.monotonic() - start
print("%.1f" % (total / secs / (1 << 20)))
PY
)
	echo "run $run: rackvault replicate $(python3 -c "print(round($t1-$t0,2))") s, $sent bytes sent, $ours MiB/s; boto3 of the pack files $theirs MiB/s" >&2
	OURS+=("$ours")
	THEIRS+=("$theirs")
done
python3 - "$SIZE_MIB" "${OURS[*]}" "${THEIRS[*]}" "${ENCRYPT:-0}" <<'PY'
import statistics as st, sys
size = int(sys.argv[1])
o = st.median(float(x) for x in sys.argv[2].split())
t = st.median(float(x) for x in sys.argv[3].split())
kind = "encrypted" if sys.argv[4] == "1" else "plain"
print("| point | store | rackvault replicate to S3, median | boto3 upload of the pack files, median | ratio |")
print("|---|---|---|---|---|")
print(f"| {size} MiB | {kind} | {o:.0f} MiB/s | {t:.0f} MiB/s | {o/t:.2f} |")
PY
