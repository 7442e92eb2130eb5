#!/usr/bin/env bash
# Direct NFS and Direct SAN ingest, side by side in one run, on the same deterministic VM disk
# (gen_vmdisk.sh) served by the real peers of tests/peers on loopback:
#   NFS   libnfs `nfs-cp URL file`, the file on a tmpfs (NFSCP_DIR, default /dev/shm) so that
#         it pays nothing for the local disk's writeback  vs  `rackvault backup nfs://...`
#         (new store each run, on disk)
#   iSCSI libiscsi `iscsi-perf` (sequential READs, 32 in flight, 128 KiB each, for a fixed
#         time; it reports its average)  vs  `rackvault backup iscsi://...` (new store each run)
# rackvault runs its whole pipeline: read, hash, zero-skip, store in packs (compression
# deferred to the store's recompression pass, its default); also compressing during the
# backup (--compress-now, zstd 1), and our protocol clients alone (examples
# nfs3_read and iscsi_read: read the whole disk, discard it), to separate protocol speed
# from pipeline cost. Throughput is logical disk bytes per second of wall time; medians of
# RUNS runs. The servers run on the same 2 cores as the clients.
#
#   tests/bench/ingest-bench.sh                 # 1 GiB disk, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/ingest-bench.sh
#   SKIP_BUILD=1 ...                            # use the binaries already in target/release
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

[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release -p rackvault --quiet &&
	cargo build --release -p nfs3 --example nfs3_read --quiet && cargo build --release -p iscsi --example iscsi_read --quiet)
RV=$ROOT/target/release/rackvault
EX=$ROOT/target/release/examples
"$ROOT/tests/peers/start-tgt-disk.sh" >/dev/null
"$ROOT/tests/peers/start-nfs-ganesha.sh" >/dev/null
# shellcheck disable=SC1091
source "$RV_PEERS_ROOT/tgt-disk/env"
# shellcheck disable=SC1091
source "$RV_PEERS_ROOT/nfs-ganesha/env"

# The disk: one file in the NFS export, also exported as an iSCSI LUN (thin, so GET LBA
# STATUS reports its holes).
IMG=$RV_NFS_EXPORT_DIR/bench-vm-$SIZE_MIB.img
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

NFS_URL="nfs://127.0.0.1:$RV_NFS_PORT/export/bench-vm-$SIZE_MIB.img?mountport=$RV_NFS_MOUNT_PORT"
LIBNFS_URL="nfs://127.0.0.1/export/bench-vm-$SIZE_MIB.img?nfsport=$RV_NFS_PORT&mountport=$RV_NFS_MOUNT_PORT"
ISCSI_URL="iscsi://$RV_TGT_DISK_PORTAL/$BENCH_IQN/1"
BYTES=$((SIZE_MIB << 20))
TSV=$WORK/results.tsv
NFSCP_OUT=${NFSCP_DIR:-/dev/shm}/rackvault-bench-nfs-cp.$$
trap 'rm -f "$NFSCP_OUT"; "${T[@]}" --op delete --force --mode target --tid $BENCH_TID >/dev/null 2>&1 || true' EXIT
printf 'run\tcontender\tseconds\tMBps\n' >"$TSV"
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
mbps() { awk -v a="$1" -v b="$2" -v n="$BYTES" 'BEGIN { printf "%.0f", n / (b - a) / 1e6 }'; }
for ((run = 1; run <= RUNS; run++)); do
	rm -f "$NFSCP_OUT"
	t0=$(now); nfs-cp "$LIBNFS_URL" "$NFSCP_OUT" >/dev/null; t1=$(now)
	printf '%s\tnfs-cp\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	rm -f "$NFSCP_OUT"
	sync # no contender pays for another's dirty pages

	rm -rf "$WORK/store-nfs"
	t0=$(now); "$RV" backup "$NFS_URL" --store "$WORK/store-nfs" --name bench --json >"$WORK/nfs-report.json"; t1=$(now)
	printf '%s\trackvault-nfs\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	rm -rf "$WORK/store-nfs"
	rm -rf "$WORK/store-nfs"
	t0=$(now); "$RV" backup "$NFS_URL" --compress-now --store "$WORK/store-nfs" --name bench --json >/dev/null; t1=$(now)
	printf '%s\trackvault-nfs-inline\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	t0=$(now); "$EX/nfs3_read" 127.0.0.1 /export "bench-vm-$SIZE_MIB.img" --nfs-port "$RV_NFS_PORT" --mount-port "$RV_NFS_MOUNT_PORT" >/dev/null; t1=$(now)
	printf '%s\tnfs3-client-only\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"

	timeout -s INT "$PERF_SECONDS" iscsi-perf -m 32 -b 256 "$ISCSI_URL" >"$WORK/iscsi-perf.out" 2>&1 || true
	# iscsi-perf labels its figure "MB/s" but computes bytes >> 20 (MiB/s, libiscsi's
	# utils/iscsi-perf.c): converted to MB/s like every other figure here.
	mibps=$(tr '\r' '\n' <"$WORK/iscsi-perf.out" | sed -n 's/.*iops average [0-9]* (\([0-9]*\) MB\/s).*/\1/p' | tail -1)
	mbps=$(python3 -c "print(f'{${mibps:-0} * 1048576 / 1e6:.1f}')")
	printf '%s\tiscsi-perf\t%s\t%s\n' "$run" "$PERF_SECONDS" "$mbps" >>"$TSV"

	rm -rf "$WORK/store-iscsi"
	t0=$(now); "$RV" backup "$ISCSI_URL" --store "$WORK/store-iscsi" --name bench --json >"$WORK/iscsi-report.json"; t1=$(now)
	printf '%s\trackvault-iscsi\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	rm -rf "$WORK/store-iscsi"
	rm -rf "$WORK/store-iscsi"
	t0=$(now); "$RV" backup "$ISCSI_URL" --compress-now --store "$WORK/store-iscsi" --name bench --json >/dev/null; t1=$(now)
	printf '%s\trackvault-iscsi-inline\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
	t0=$(now); "$EX/iscsi_read" "$RV_TGT_DISK_PORTAL" "$BENCH_IQN" 1 32 256 >/dev/null; t1=$(now)
	printf '%s\tiscsi-client-only\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$(mbps "$t0" "$t1")" >>"$TSV"
done
rm -rf "$WORK/store-nfs" "$WORK/store-iscsi"
column -t "$TSV"
python3 - "$TSV" "$SIZE_MIB" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda c: st.median(float(r["MBps"]) for r in rows if r["contender"] == c)
print(f"\n## Ingest, {sys.argv[2]} MiB VM disk, medians (MB/s of logical disk bytes)")
print("| path | peer tool | peer MB/s | rackvault backup MB/s | ratio (target NFS >= 1.0, iSCSI >= 0.9) | backup --compress-now MB/s | ratio | our client alone MB/s | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for path, peer, ours, raw, client in (
    ("NFSv3", "nfs-cp", "rackvault-nfs", "rackvault-nfs-inline", "nfs3-client-only"),
    ("iSCSI", "iscsi-perf", "rackvault-iscsi", "rackvault-iscsi-inline", "iscsi-client-only"),
):
    p, o, n, c = med(peer), med(ours), med(raw), med(client)
    ratio = lambda x: f"{x / p:.2f}" if p else "-"
    want = 1.0 if path == "NFSv3" else 0.9
    met = "met" if p and o / p >= want else "NOT met"
    print(f"| {path} | {peer} | {p:.0f} | {o:.0f} | {ratio(o)} ({met}) | {n:.0f} | {ratio(n)} | {c:.0f} | {ratio(c)} |")
PY
