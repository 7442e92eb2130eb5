#!/usr/bin/env bash
# Side-by-side benchmark: rackvault, restic and borg on the same deterministic VM disk
# (tests/bench/gen_vmdisk.sh), in one run, page cache warm:
#   full backup, incremental after a 1% scattered 64 KiB mutation, restore checked by BLAKE3.
# Each step is timed with /usr/bin/time -v (wall, CPU, peak RSS) and the repository size is
# recorded after it. Prints the medians and rackvault's ratios against the targets.
#
#   tests/bench/bench.sh                  # 2 GiB image, 3 runs per tool
#   SIZE_MIB=256 RUNS=1 tests/bench/bench.sh
#   TOOL_FILES="tests/bench/rackvault.tool tests/bench/rackvault-no-readahead.tool" DROP_CACHES=1 \
#     tests/bench/bench.sh                # also restores without the read-ahead, caches dropped
#   TOOL_FILES="tests/bench/rackvault.tool tests/bench/rackvault-inline.tool" tests/bench/bench.sh
#                                         # also compressing during the backup (--compress-now)
#   LOAD=1 tests/bench/bench.sh           # a busy loop takes one core for the whole run
#   taskset -c 0 tests/bench/bench.sh     # every tool on one core (CPU-count scaling)
# Needs root for apt-get (restic, borgbackup, b3sum, time) the first time.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export SIZE_MIB=${SIZE_MIB:-2048} RUNS=${RUNS:-3} TOOLS=${TOOLS-restic borg}
export RESULTS=${RESULTS:-/tmp/rackvault-bench/results/$(date -u +%Y%m%dT%H%M%SZ)}
export RACKVAULT_BENCH_ARGS=${RACKVAULT_BENCH_ARGS:-}
(cd "$ROOT" && cargo build --release -p rackvault --quiet)
export RACKVAULT_BIN=$ROOT/target/release/rackvault
status=0
if [[ ${LOAD:-0} == 1 ]]; then
	# One core busy for the whole run, as on an appliance doing other work; stopped by its PID.
	python3 -c 'while True: pass' &
	HOG=$!
	trap 'kill $HOG 2>/dev/null' EXIT
fi
TOOL_FILES=${TOOL_FILES:-"$HERE/rackvault.tool"} "$HERE/peer-bench.sh" || status=$?
python3 - "$RESULTS/results.tsv" <<'PY'
import csv, statistics as st, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["wall_s"] != "-"]
def med(tool, op, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["op"] == op]
    return st.median(v) if v else None
def growth(tool):
    # per run: repo after incr - repo after full
    by_run = {}
    for r in rows:
        if r["tool"] == tool and r["op"] in ("backup_full", "backup_incr"):
            by_run.setdefault(r["run"], {})[r["op"]] = float(r["repo_bytes"])
    g = [d["backup_incr"] - d["backup_full"] for d in by_run.values() if len(d) == 2]
    return st.median(g) if g else None
rv = "rackvault"
print("\n## rackvault against the targets (medians)")
print("| check | rackvault | peer | ratio | target | met |")
print("|---|---|---|---|---|---|")
def line(name, ours, theirs, target, better_when_higher=True):
    if ours is None or theirs is None or ours == 0:
        print(f"| {name} | - | - | - | {target} | n/a |"); return
    ratio = theirs / ours
    want = float(target.split("x")[0].lstrip(">= ").lstrip("<= "))
    met = ratio >= want
    print(f"| {name} | {ours:.2f} | {theirs:.2f} | {ratio:.2f}x | {target} | {'yes' if met else 'NO'} |")
for peer, want in (("restic", ">= 8x"), ("borg", ">= 4x")):
    line(f"full backup wall s vs {peer}", med(rv, "backup_full", "wall_s"), med(peer, "backup_full", "wall_s"), want)
line("restore wall s vs restic", med(rv, "restore", "wall_s"), med("restic", "restore", "wall_s"), ">= 4x")
g_rv, g_re = growth(rv), growth("restic")
if g_rv is not None and g_re:
    print(f"| store growth from 1% change MiB vs restic | {g_rv/2**20:.1f} | {g_re/2**20:.1f} | {g_re/max(g_rv,1):.2f}x | >= 3x (at most 1/3) | {'yes' if g_rv*3 <= g_re else 'NO'} |")
inl = "rackvault-inline"
if med(inl, "backup_full", "wall_s") is not None:
    line("full backup wall s vs restic, compressing inline", med(inl, "backup_full", "wall_s"), med("restic", "backup_full", "wall_s"), ">= 8x")
cpu = lambda t: (med(t, "backup_full", "user_s") or 0) + (med(t, "backup_full", "sys_s") or 0)
if med("borg", "backup_full", "wall_s") is not None:
    line("full backup CPU-s vs borg", cpu(rv), cpu("borg"), ">= 4x")
after, inline_size = med(rv, "after", "repo_bytes"), med(inl, "backup_incr", "repo_bytes")
if after is not None and inline_size:
    d = (after - inline_size) / inline_size * 100
    print(f"| store MiB after recompression vs compressed inline | {after/2**20:.1f} | {inline_size/2**20:.1f} | {d:+.2f}% | within 3% | {'yes' if abs(d) <= 3 else 'NO'} |")
rss = max((float(r["maxrss_kb"]) for r in rows if r["tool"] == rv), default=0) / 1024
print(f"| peak RSS MiB, any step | {rss:.0f} | | | <= 256 | {'yes' if rss <= 256 else 'NO'} |")
PY
exit $status
