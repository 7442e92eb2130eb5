#!/usr/bin/env bash
# Restore with and without the read-ahead (store::Readahead), side by side in one run, with
# the page cache dropped before every cold restore:
#   1. a fresh store: one full backup of the corpus (its chunks lie in pack order);
#   2. the same store after 6 incrementals, each after rewriting 8% of the disk in scattered
#      64 KiB blocks: the newest point's chunks are spread over 7 backups' packs.
# Prints each restore's wall time; the medians go to README ("Restore read-ahead").
#
#   tests/bench/readahead-bench.sh            # 2 GiB corpus, 5 cold and 3 warm runs each
#   SIZE_MIB=512 RUNS=3 tests/bench/readahead-bench.sh
# Needs root (drop_caches) and b3sum-free: the restores are checked by --verify once.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-2048} RUNS=${RUNS:-5} WARM_RUNS=${WARM_RUNS:-3}
WORK=$(mktemp -d /tmp/rackvault-readahead.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && cargo build --release -p rackvault --quiet)
B=$ROOT/target/release/rackvault
cd "$WORK"
bash "$HERE/gen_vmdisk.sh" create disk.img "$SIZE_MIB" 42 >/dev/null
"$B" backup disk.img --store store --name vm --json >/dev/null
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
restore() { # restore MODE: prints wall seconds
	rm -f out.img
	local s e
	s=$(date +%s.%N)
	if [[ $1 == with ]]; then "$B" restore vm --store store --to out.img --json >/dev/null
	else "$B" restore vm --store store --to out.img --json --no-read-ahead >/dev/null; fi
	e=$(date +%s.%N)
	python3 -c "print(f'{$e - $s:.2f}')"
}
measure() { # measure LABEL
	local mode i
	for mode in with without; do
		local cold=() warm=()
		for ((i = 0; i < RUNS; i++)); do drop; cold+=("$(restore "$mode")"); done
		for ((i = 0; i < WARM_RUNS; i++)); do warm+=("$(restore "$mode")"); done
		printf '%s\tread-ahead %s\tcold %s\twarm %s\n' "$1" "$mode" "${cold[*]}" "${warm[*]}"
	done
}
measure fresh
cp --sparse=always disk.img disk2.img
for v in 1 2 3 4 5 6; do
	bash "$HERE/gen_vmdisk.sh" mutate disk2.img "$v" 8 >/dev/null
	"$B" backup disk2.img --store store --name vm --json >/dev/null
done
measure spread
"$B" restore vm --store store --to checked.img --verify --json >/dev/null && echo "the newest point restores and verifies"
