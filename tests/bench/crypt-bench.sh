#!/usr/bin/env bash
# The cost of encryption: full backups of the benchmark corpus into a new store, unencrypted
# and encrypted (AES-256-GCM, and XChaCha20-Poly1305 for comparison), with rackvault's default
# zstd level and with --no-compress (where the cipher's share of the work is largest).
# Prints one Markdown table of medians: wall s, MB/s of logical disk, CPU s, and the
# encrypted/unencrypted wall-time ratio (issue 13's target: <= 1.15).
#   tests/bench/crypt-bench.sh                    # 1 GiB image, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/crypt-bench.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
WORK=${WORK:-/tmp/rackvault-bench/crypt}
(cd "$ROOT" && cargo build --release -p rackvault --quiet)
RV=$ROOT/target/release/rackvault
mkdir -p "$WORK"
BASE=$WORK/base-${SIZE_MIB}M.img
[[ -f $BASE ]] || "$HERE/gen_vmdisk.sh" create "$BASE" "$SIZE_MIB" 42 >&2
cat "$BASE" >/dev/null # page cache warm, as in the other benchmarks
grep -qw aes /proc/cpuinfo && echo "AES-NI: yes" >&2 || echo "AES-NI: no" >&2
TSV=$WORK/results.tsv
printf 'mode\tcompress\trun\twall_s\tcpu_s\tbytes\n' >"$TSV"
for run in $(seq 1 "$RUNS"); do
	for compress in zstd none; do
		for mode in plain aes-256-gcm xchacha20-poly1305; do
			rm -rf "$WORK/store" "$WORK/store.key"
			args=(backup "$BASE" --store "$WORK/store" --name vm --json)
			[[ $compress == none ]] && args+=(--no-compress)
			if [[ $mode != plain ]]; then
				args+=(--encrypt --cipher "$mode" --key-file "$WORK/store.key")
			fi
			out=$(/usr/bin/time -f '%e %U %S' -o "$WORK/time" "$RV" "${args[@]}" 2>/dev/null)
			read -r wall user sys <"$WORK/time"
			bytes=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["bytes_logical"])' "$out")
			printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$compress" "$run" "$wall" \
				"$(python3 -c "print($user+$sys)")" "$bytes" >>"$TSV"
		done
	done
done
python3 - "$TSV" <<'PY'
import csv, statistics as st, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(mode, comp, key):
    return st.median(float(r[key]) for r in rows if r["mode"] == mode and r["compress"] == comp)
print("| compression | store | wall s (median) | MB/s | CPU s | wall vs unencrypted |")
print("|---|---|---|---|---|---|")
for comp in ("zstd", "none"):
    base = med("plain", comp, "wall_s")
    for mode in ("plain", "aes-256-gcm", "xchacha20-poly1305"):
        w = med(mode, comp, "wall_s")
        b = med(mode, comp, "bytes")
        print(f"| {'zstd -1' if comp == 'zstd' else 'none'} | {mode} | {w:.2f} | {b/1e6/w:.0f} | "
              f"{med(mode, comp, 'cpu_s'):.1f} | {w/base:.2f}x |")
PY
