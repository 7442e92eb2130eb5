#!/usr/bin/env bash
# Direct NFS and Direct SAN ingest, side by side in one run, on the same deterministic VM disk
# (gen_vmdisk.sh) served by the real peers of tests/peers on loopback:
#   NFS   libnfs `nfs-cp URL local-file`  vs  `rackvault backup nfs://...` (new store each run)
#   iSCSI libiscsi `iscsi-perf` (sequential READs, 32 in flight, 128 KiB each, for a fixed
#         time; it reports its average)  vs  `rackvault backup iscsi://...` (new store each run)
# rackvault runs its whole pipeline: read, hash, zero-skip, compress (zstd 1), store in packs.
# Throughput is logical disk bytes per second of wall time; medians of RUNS runs.
#
#   tests/bench/ingest-bench.sh                 # 1 GiB disk, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/ingest-bench.sh
# Needs root (it starts tgtd and nfs-ganesha if they are not running, and adds a bench target).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
PERF_SECONDS=${PERF_SECONDS:-10}
export RV_PEERS_ROOT=${RV_PEERS_ROOT:-/tmp/rackvault-peers}
WORK=${WORK:-/tmp/rackvault-bench/ingest}
mkdir -p "$WORK"

(cd "$ROOT" && cargo build --release -p rackvault --quiet)
RV=$ROOT/target/release/rackvault
"$ROOT/tests/peers/start-tgt-disk.sh" >/dev/null
"$ROOT/tests/peers/start-nfs-ganesha.sh" >/dev/null
# shellcheck disable=SC1091
source "$RV_PEERS_ROOT/tgt-disk/env"
# shellcheck disable=SC1091
source "$RV_PEERS_ROOT/nfs-ganesha/env"

# The disk: one file in the NFS export, also exported as an iSCSI LUN (thin, so GET LBA
# STATUS reports its holes).
IMG=$RV_NFS_EXPORT_DIR/bench-vm.img
if [[ ! -f $IMG || $(stat -c %s "$IMG") -ne $((SIZE_MIB << 20)) ]]; then
	"$HERE/gen_vmdisk.sh" create "$IMG" "$SIZE_MIB" 42 >/dev/null
fi
T=(tgtadm -C "$RV_TGT_DISK_CTL" --lld iscsi)
BENCH_TID=9 BENCH_IQN=iqn.2024-01.test.rackvault:bench
"${T[@]}" --op delete --force --mode target --tid $BENCH_TID >/dev/null 2>&1 || true
"${T[@]}" --op new --mode target --tid $BENCH_TID -T $BENCH_IQN
"${T[@]}" --op new --mode logicalunit --tid $BENCH_TID --lun 1 -b "$IMG"
"${T[@]}" --op update --mode logicalunit --tid $BENCH_TID --lun 1 --params thin_provisioning=1
"${T[@]}" --op bind --mode target --tid $BENCH_TID -I ALL
trap '"${T[@]}" --op delete --force --mode target --tid $BENCH_TID >/dev/null 2>&1 || true' EXIT
cat "$IMG" >/dev/null # warm the server side's page cache for every contender alike

NFS_URL="nfs://127.0.0.1:$RV_NFS_PORT/export/bench-vm.img?mountport=$RV_NFS_MOUNT_PORT"
LIBNFS_URL="nfs://127.0.0.1/export/bench-vm.img?nfsport=$RV_NFS_PORT&mountport=$RV_NFS_MOUNT_PORT"
ISCSI_URL="iscsi://$RV_TGT_DISK_PORTAL/$BENCH_IQN/1"
BYTES=$((SIZE_MIB << 20))
TSV=$WORK/results.tsv
printf 'run\tcontender\tseconds\tMBps\n' >"$TSV"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mbps() { awk -v a="$1" -v b="$2" -v n="$BYTES" 'BEGIN { printf "%.0f", n / (b - a) / 1e6 }'; }
for ((run = 1; run <= RUNS; run++)); do
	rm -f "$WORK/nfs-cp.out"
	t0=$(now); nfs-cp "$LIBNFS_URL" "$WORK/nfs-cp.out" >/dev/null; t1=$(now)
	printf '%s\tnfs-cp\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	rm -f "$WORK/nfs-cp.out"

	rm -rf "$WORK/store-nfs"
	t0=$(now); "$RV" backup "$NFS_URL" --store "$WORK/store-nfs" --name bench --json >"$WORK/nfs-report.json"; t1=$(now)
	printf '%s\trackvault-nfs\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"

	timeout -s INT "$PERF_SECONDS" iscsi-perf -m 32 -b 256 "$ISCSI_URL" >"$WORK/iscsi-perf.out" 2>&1 || true
	mbps=$(tr '\r' '\n' <"$WORK/iscsi-perf.out" | sed -n 's/.*iops average [0-9]* (\([0-9]*\) MB\/s).*/\1/p' | tail -1)
	printf '%s\tiscsi-perf\t%s\t%s\n' "$run" "$PERF_SECONDS" "${mbps:-0}" >>"$TSV"

	rm -rf "$WORK/store-iscsi"
	t0=$(now); "$RV" backup "$ISCSI_URL" --store "$WORK/store-iscsi" --name bench --json >"$WORK/iscsi-report.json"; t1=$(now)
	printf '%s\trackvault-iscsi\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
done
rm -rf "$WORK/store-nfs" "$WORK/store-iscsi"
column -t "$TSV"
python3 - "$TSV" "$SIZE_MIB" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda c: st.median(float(r["MBps"]) for r in rows if r["contender"] == c)
print(f"\n## Ingest, {sys.argv[2]} MiB VM disk, medians (MB/s of logical disk bytes)")
print("| path | peer tool | peer MB/s | rackvault MB/s | ratio | target | met |")
print("|---|---|---|---|---|---|---|")
for path, peer, ours in (("NFSv3", "nfs-cp", "rackvault-nfs"), ("iSCSI", "iscsi-perf", "rackvault-iscsi")):
    p, o = med(peer), med(ours)
    r = o / p if p else 0
    print(f"| {path} | {peer} | {p:.0f} | {o:.0f} | {r:.2f} | >= 1.0 | {'yes' if r >= 1.0 else 'NO'} |")
PY
