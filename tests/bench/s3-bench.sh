#!/usr/bin/env bash
# S3 upload throughput, side by side in one run: the same pack-sized files uploaded to the same
# SeaweedFS (tests/peers/start-s3.sh, its own instance on port 18533 with room for the data)
# by rackvault's s3 crate (firmware/s3/examples/s3_upload.rs: S3Client::upload, multipart)
# and by boto3 (upload_file from the peer's venv), with the same part size and the same number
# of parts in flight. Each contender reads its files into memory first and times only the
# upload; each run uses a new bucket. Prints MiB/s per run and the medians.
#
#   tests/bench/s3-bench.sh                      # 4 files of 256 MiB (the store's pack size), 3 runs
#   FILES=2 FILE_MIB=64 RUNS=1 tests/bench/s3-bench.sh
#   PART_MIB=8 CONCURRENCY=4 ...                 # multipart part size and parts in flight (both tools)
#   SKIP_BUILD=1 ...                             # use target/release/examples/s3_upload as built
# Needs python3-venv and PyPI (the peer script installs SeaweedFS and boto3 into a venv).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FILES=${FILES:-4}
FILE_MIB=${FILE_MIB:-256}
RUNS=${RUNS:-3}
export PART_MIB=${PART_MIB:-8} CONCURRENCY=${CONCURRENCY:-4}
export RV_PEERS_ROOT=${RV_PEERS_ROOT:-/tmp/rackvault-peers}
WORK=${WORK:-/tmp/rackvault-bench/s3}
mkdir -p "$WORK/files"

[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release -p s3 --example s3_upload --quiet)
EX=$ROOT/target/release/examples/s3_upload

# A SeaweedFS of our own: big enough volumes for RUNS x 2 x FILES x FILE_MIB, stopped at the end.
export RV_S3_DIR=$WORK/seaweedfs RV_S3_PORT=${RV_S3_PORT:-18533}
export RV_S3_VOLUME_MB=${RV_S3_VOLUME_MB:-1024} RV_S3_MAX_VOLUMES=${RV_S3_MAX_VOLUMES:-64}
trap '"$ROOT/tests/peers/stop-s3.sh" >/dev/null 2>&1 || true' EXIT
"$ROOT/tests/peers/start-s3.sh" >/dev/null
set -a
# shellcheck disable=SC1091
source "$RV_S3_DIR/env"
set +a

files=()
for i in $(seq 1 "$FILES"); do
	f=$WORK/files/pack-$FILE_MIB-$i.pack
	[[ -s $f ]] || head -c $((FILE_MIB << 20)) /dev/urandom >"$f"
	files+=("$f")
done

echo "# $FILES x $FILE_MIB MiB, parts of $PART_MIB MiB, $CONCURRENCY in flight, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $RV_S3_SERVER"
ours=() theirs=()
for run in $(seq 1 "$RUNS"); do
	tag=$run-$$-$(date +%s)
	read -r _ _ _ mibs retries < <("$EX" "rv-bench-ours-$tag" "${files[@]}")
	ours+=("$mibs")
	read -r _ _ _ bmibs < <("$RV_S3_PYTHON" - "rv-bench-boto3-$tag" "${files[@]}" <<'PY'
import os, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
E = os.environ
s3 = boto3.client("s3", endpoint_url=E["RV_S3_ENDPOINT"], region_name=E["RV_S3_REGION"],
                  aws_access_key_id=E["RV_S3_ACCESS_KEY"], aws_secret_access_key=E["RV_S3_SECRET_KEY"],
                  config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"))
bucket, files = sys.argv[1], sys.argv[2:]
part = int(E["PART_MIB"]) << 20
tc = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=int(E["CONCURRENCY"]))
s3.create_bucket(Bucket=bucket)
import io
data = [(os.path.basename(f), open(f, "rb").read()) for f in files]
start = time.monotonic()
total = 0
for name, d in data:
    total += len(d)
    s3.upload_fileobj(io.BytesIO(d), bucket, "packs/" + name, Config=tc)
secs = time.monotonic() - start
print("boto3", total, "%.3f" % secs, "%.1f" % (total / secs / (1 << 20)))
PY
)
	theirs+=("$bmibs")
	echo "run $run: s3 crate $mibs MiB/s (retries $retries), boto3 $bmibs MiB/s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
mo=$(median "${ours[@]}") mb=$(median "${theirs[@]}")
echo "median: s3 crate $mo MiB/s, boto3 $mb MiB/s, ratio $(awk -v a="$mo" -v b="$mb" 'BEGIN {printf "%.2f", a / b}')"
