#!/usr/bin/env bash
# Tape destage throughput, side by side in one run, on the same restore point of a
# deterministic VM disk (gen_vmdisk.sh) backed up into a warm staging store:
#   emulated   `rackvault tape destage` to the in-process emulated library (emulated:<dir>)
#              whose cartridges discard what is written (hidden `tape emulated-discard`):
#              the destage pipeline alone (store reads, packing, block digests, SCSI layer)
#   tgt        `rackvault tape destage` to a private tgt virtual tape library on loopback
#              (iSCSI, tgtd writes the cartridge files to disk)
#   raw        the same number of bytes as 1 MiB variable blocks with WRITE(6) through our
#              iSCSI initiator and drive::TapeDrive to the same tgt drive (tape/drive example
#              raw_write, which loads the cartridge with the changer itself): the path's ceiling
# Each run starts from a fresh tape catalog and freshly labelled cartridges, so every run
# writes the whole point (zero chunks are never written to tape). MB/s are bytes written to
# tape (block headers included) per second: the destage job's whole wall time (planning,
# load, label check, catalog archive, unload) for the destages, the write phase (first
# WRITE to the filemark) for the raw writer. Medians of RUNS runs. tgtd and rackvault share
# the machine's cores.
#
#   tests/bench/tape-bench.sh                     # 2 GiB disk, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/tape-bench.sh
#   SKIP_BUILD=1 ...          # use the binaries already built ($CARGO_TARGET_DIR or target/)
# Needs root (tgtd). Starts its own tgt VTL (port 3264, control socket 34, /tmp/rvbench-vtl;
# override with RV_TGT_VTL_PORT/CTL/DIR) and stops it at the end, removing its directory;
# shared VTLs are not touched. The disk image and the store stay in $WORK for the next run.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-2048}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/rackvault-bench/tape}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export RV_TGT_VTL_DIR=${RV_TGT_VTL_DIR:-/tmp/rvbench-vtl}
export RV_TGT_VTL_PORT=${RV_TGT_VTL_PORT:-3264}
export RV_TGT_VTL_CTL=${RV_TGT_VTL_CTL:-34}
export RV_TGT_VTL_TAPES=${RV_TGT_VTL_TAPES:-2}
# Room for the whole point on one cartridge (stored bytes never exceed the logical size by
# more than the record headers).
export RV_TGT_VTL_TAPE_MB=${RV_TGT_VTL_TAPE_MB:-$((SIZE_MIB + 1024))}
mkdir -p "$WORK"

[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$ROOT" && cargo build --release -p rackvault --quiet &&
	cargo build --release -p drive --example raw_write --quiet)
RV=$TARGET/release/rackvault
RAW=$TARGET/release/examples/raw_write
[[ -x $RV && -x $RAW ]] || { echo "missing $RV or $RAW: build them (or unset SKIP_BUILD)" >&2; exit 1; }

echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), kernel $(uname -r)"

# The restore point: a VM disk backed up into the staging store, whose packs are then read
# once so the page cache holds them (a warm store).
IMG=$WORK/vm-$SIZE_MIB.img
STORE=$WORK/store-$SIZE_MIB
if [[ ! -f $IMG || $(stat -c %s "$IMG") -ne $((SIZE_MIB << 20)) ]]; then
	rm -f "$IMG" "$STORE.json"
	"$HERE/gen_vmdisk.sh" create "$IMG" "$SIZE_MIB" 42 >/dev/null
fi
if [[ ! -s $STORE.json ]]; then # the backup report, written once the backup completed
	rm -rf "$STORE"
	"$RV" backup "$IMG" --store "$STORE" --name vm --json >"$STORE.json.tmp"
	mv "$STORE.json.tmp" "$STORE.json"
fi
find "$STORE" -type f -exec cat {} + >/dev/null

# The private tgt VTL: stopped at exit only if this script started it.
VTL_STARTED=0
stop_vtl() { ((VTL_STARTED)) && RV_TGT_VTL_PURGE=1 "$ROOT/tests/peers/stop-tgt-vtl.sh" >/dev/null 2>&1 || true; }
trap stop_vtl EXIT
if ! { [[ -s $RV_TGT_VTL_DIR/tgtd.pid ]] && kill -0 "$(<"$RV_TGT_VTL_DIR/tgtd.pid")" 2>/dev/null; }; then
	VTL_STARTED=1
fi
"$ROOT/tests/peers/start-tgt-vtl.sh" >/dev/null
# shellcheck disable=SC1091
source "$RV_TGT_VTL_DIR/env"
TGT_CHANGER=$RV_TGT_VTL_URL/$RV_TGT_VTL_CHANGER_LUN
read -r -a TGT_TAPES <<<"$RV_TGT_VTL_BARCODES"

TSV=$WORK/results.tsv
printf 'run\tcontender\tbytes\tseconds\tMBps\tdrive_waits\n' >"$TSV"
# record RUN CONTENDER JSON-FILE: lines of the TSV from a destage report or raw_write's
# output (two lines: its write phase, and from the cartridge load on)
record() {
	python3 - "$1" "$2" "$3" >>"$TSV" <<'PY'
import json, sys
run, who, path = sys.argv[1:]
r = json.load(open(path))
b = r.get("bytes_to_tape", r.get("bytes"))
print(f"{run}\t{who}\t{b}\t{r['seconds']:.3f}\t{r['mb_per_s']:.0f}\t{r.get('drive_waits', '-')}")
if "total_seconds" in r:
    t = r["total_seconds"]
    print(f"{run}\t{who}-from-load\t{b}\t{t:.3f}\t{b / 1e6 / t:.0f}\t-")
PY
}
for ((run = 1; run <= RUNS; run++)); do
	# Emulated library, discarding cartridges, created fresh.
	EMU=emulated:$WORK/emu-lib
	rm -rf "$WORK/emu-lib" "$WORK/emu-catalog"
	"$RV" tape --changer "$EMU" --catalog "$WORK/emu-catalog" emulated-discard >/dev/null
	"$RV" tape --changer "$EMU" --catalog "$WORK/emu-catalog" label --all-unlabelled --pool bench --json >/dev/null
	"$RV" tape --changer "$EMU" --catalog "$WORK/emu-catalog" --store "$STORE" destage vm --pool bench --json \
		>"$WORK/emulated-$run.json"
	record "$run" destage-emulated-discard "$WORK/emulated-$run.json"

	# tgt: a fresh catalog, the data cartridges labelled again (--force: the last run wrote them).
	rm -rf "$WORK/tgt-catalog"
	"$RV" tape --changer "$TGT_CHANGER" --catalog "$WORK/tgt-catalog" label "${TGT_TAPES[@]}" --force --pool bench \
		--json >/dev/null
	"$RV" tape --changer "$TGT_CHANGER" --catalog "$WORK/tgt-catalog" --store "$STORE" destage vm --pool bench --json \
		>"$WORK/tgt-$run.json"
	record "$run" destage-tgt "$WORK/tgt-$run.json"

	# The raw writer: as many bytes as that destage wrote, onto the first cartridge again.
	bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_to_tape"])' "$WORK/tgt-$run.json")
	"$RAW" "$RV_TGT_VTL_PORTAL" "$RV_TGT_VTL_IQN" "$RV_TGT_VTL_CHANGER_LUN" "${TGT_TAPES[0]}" "$bytes" >"$WORK/raw-$run.json"
	record "$run" raw-write-tgt "$WORK/raw-$run.json"
done
rm -rf "$WORK/emu-lib" "$WORK/emu-catalog" "$WORK/tgt-catalog"
column -t "$TSV"
python3 - "$TSV" "$SIZE_MIB" "$RUNS" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def col(c, k):
    return [float(r[k]) for r in rows if r["contender"] == c and r[k] != "-"]
def med(c, k):
    v = col(c, k)
    return st.median(v) if v else float("nan")
print(f"\n## Tape destage, {sys.argv[2]} MiB VM disk, medians of {sys.argv[3]} runs (MB/s of bytes written to tape)")
print("| contender | target | MiB to tape | seconds | MB/s (min-max) | drive_waits |")
print("|---|---|---|---|---|---|")
for c, target in (
    ("destage-emulated-discard", "emulated drive, discarding"),
    ("destage-tgt", "tgt VTL over iSCSI"),
    ("raw-write-tgt", "tgt VTL over iSCSI"),
    ("raw-write-tgt-from-load", "tgt VTL over iSCSI"),
):
    m = col(c, "MBps")
    waits = col(c, "drive_waits")
    w = f"{st.median(waits):.0f}" if waits else "-"
    print(f"| {c} | {target} | {med(c, 'bytes') / 2**20:.0f} | {med(c, 'seconds'):.2f} | "
          f"{med(c, 'MBps'):.0f} ({min(m):.0f}-{max(m):.0f}) | {w} |")
e, t, r = med("destage-emulated-discard", "MBps"), med("destage-tgt", "MBps"), med("raw-write-tgt", "MBps")
print(f"\ndestage to the discarding emulated drive: {e:.0f} MB/s, target >= 480 MB/s: {'met' if e >= 480 else 'NOT met'}")
l = med("raw-write-tgt-from-load", "MBps")
print(f"destage to tgt / raw writer to tgt: {t:.0f} / {r:.0f} MB/s = {t / r:.2f} "
      f"(raw writer timed from the cartridge load: {t:.0f} / {l:.0f} = {t / l:.2f})")
PY
