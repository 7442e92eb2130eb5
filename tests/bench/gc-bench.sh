#!/usr/bin/env bash
# Garbage collection on a store of 1 M distinct data chunks with 30% dead, side by side in one
# run (examples/gc_bench.rs of the store crate describes the workload):
#   naive       walk every restore point's index tree in full, every digest into a HashSet,
#               then count the dead index entries (read-only; nothing is deleted)
#   gc dry-run  Store::gc's mark (exact set for tree nodes, Bloom filter for leaves, subtree
#               skipping) and condemn count, nothing changed
#   gc          Store::gc with default options: mark, condemn, sweep (repack threshold 0.3)
# The store is built once, then copied (cp -a) for each contender, so each runs on an identical
# store with its files in the page cache. Each run is timed with /usr/bin/time -v (wall, CPU,
# peak RSS); gc_bench itself samples its peak anonymous and file-backed (the mapped LMDB index)
# RSS every 5 ms. Afterwards the naive mark runs again on the collected copy: what it still
# finds dead is what GC's Bloom filter kept (false positives); the script fails if the counts
# do not add up (naive dead = gc condemned + false positives) or a live chunk was collected.
#
#   tests/bench/gc-bench.sh                  # 1,000,000 chunks
#   CHUNKS=100000 tests/bench/gc-bench.sh
# Needs root for apt-get (time) the first time.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHUNKS=${CHUNKS:-1000000}
WORK=${WORK:-$(mktemp -d -t rackvault-gc-bench.XXXXXX)}

if [[ ! -x /usr/bin/time ]]; then
	apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
	DEBIAN_FRONTEND=noninteractive "${apt[@]}" install time >/dev/null ||
		{ DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >/dev/null &&
		  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install time >/dev/null; }
fi
(cd "$ROOT" && cargo build --release -p store --example gc_bench --quiet)
EX=$ROOT/target/release/examples/gc_bench

rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
echo "gc-bench: building a store of $CHUNKS chunks in $WORK/base" >&2
"$EX" build "$WORK/base" "$CHUNKS" >"$WORK/build.json"

# timed_run NAME SUBCOMMAND [FLAGS]: run gc_bench on a fresh copy of the base store under /usr/bin/time
timed_run() {
	local name=$1 cmd=$2
	shift 2
	rm -rf "$WORK/run-$name"
	cp -a "$WORK/base" "$WORK/run-$name"
	sync
	/usr/bin/time -v -o "$WORK/$name.time" "$EX" "$cmd" "$WORK/run-$name" "$@" >"$WORK/$name.json"
}
echo "gc-bench: naive" >&2
timed_run naive naive
echo "gc-bench: gc --dry-run" >&2
timed_run gc-dry gc --dry-run
echo "gc-bench: gc" >&2
timed_run gc gc
"$EX" naive "$WORK/run-gc" >"$WORK/after-gc.json"
rm -rf "$WORK/run-naive" "$WORK/run-gc-dry"

python3 - "$WORK" "$CHUNKS" <<'PY'
import json, re, sys
work, chunks = sys.argv[1], int(sys.argv[2])
load = lambda n: json.load(open(f"{work}/{n}.json"))
def timing(n):
    t = open(f"{work}/{n}.time").read()
    field = lambda k: re.search(rf"{k}: (.*)", t).group(1).strip()
    wall = 0.0
    for part in field(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\)").split(":"):
        wall = wall * 60 + float(part)
    cpu = float(field("User time \\(seconds\\)")) + float(field("System time \\(seconds\\)"))
    return wall, cpu, int(field(r"Maximum resident set size \(kbytes\)")) / 1024
b, naive, dry, gc, after = load("build"), load("naive"), load("gc-dry"), load("gc"), load("after-gc")
ok = naive["dead"] == gc["chunks_condemned"] + after["dead"] and after["live"] == naive["live"] \
    and dry["chunks_condemned"] == gc["chunks_condemned"]
print(f"\n## GC, {b['data_chunks']:,} data chunks ({b['points_built']} points built, {b['points_deleted']} deleted, "
      f"{b['points_kept']} kept of {b['disk_chunks']:,} chunks each); built in {b['duration_s']:.1f} s, "
      f"packs {b['pack_bytes']/2**20:.0f} MiB, index {b['index_bytes']/2**20:.0f} MiB")
print(f"dead data chunks by construction: {b['dead_data_chunks']:,} ({100*b['dead_data_chunks']/b['data_chunks']:.1f}%)\n")
print("| contender | wall s | CPU s | mark s | peak RSS MiB | peak anon / file-backed MiB | mark set MiB | dead entries found | notes |")
print("|---|---|---|---|---|---|---|---|---|")
mib = lambda r: f"{r['peak_rss_anon_kib']/1024:.0f} / {r['peak_rss_file_kib']/1024:.0f}"
w, c, r = timing("naive")
print(f"| naive: full walk into a HashSet | {w:.2f} | {c:.2f} | {naive['mark_s']:.2f} | {r:.0f} | {mib(naive)} | "
      f"{naive['set_bytes']/2**20:.1f} | {naive['dead']:,} | {naive['digests_visited']:,} digests visited, "
      f"{naive['tree_nodes_read']:,} nodes read |")
w, c, r = timing("gc-dry")
print(f"| Store::gc dry run (mark, condemn count) | {w:.2f} | {c:.2f} | {dry['mark_s']:.2f} | {r:.0f} | {mib(dry)} | "
      f"{dry['mark_set_bytes']/2**20:.1f} | {dry['chunks_condemned']:,} | {dry['tree_nodes_marked']:,} tree nodes marked |")
w, c, r = timing("gc")
print(f"| Store::gc (mark, condemn, sweep) | {w:.2f} | {c:.2f} | {gc['mark_s']:.2f} | {r:.0f} | {mib(gc)} | "
      f"{gc['mark_set_bytes']/2**20:.1f} | {gc['chunks_condemned']:,} | {gc['packs_deleted']} packs deleted, "
      f"{gc['packs_repacked']} repacked, {gc['bytes_freed']/2**20:.0f} MiB freed |")
print(f"\nBloom false positives (dead entries the naive mark still finds after gc): {after['dead']:,} "
      f"({100*after['dead']/max(naive['dead'],1):.2f}% of the dead); live entries before/after: "
      f"{naive['live']:,}/{after['live']:,}; counts agree: {'yes' if ok else 'NO'}")
sys.exit(0 if ok else 1)
PY
