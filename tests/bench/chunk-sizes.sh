#!/usr/bin/env bash
# Chunk-size sweep on the benchmark corpus: for each size, a full backup (speed), the store
# growth from a 1% scattered 64 KiB mutation, and the metadata cost (chunk index in LMDB plus
# index-tree nodes) scaled to one TiB of logical disk.
#   tests/bench/chunk-sizes.sh            # 2 GiB image
#   SIZE_MIB=512 SIZES="256K 1M" tests/bench/chunk-sizes.sh
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-2048}
SIZES=${SIZES:-64K 128K 256K 512K 1M 2M 4M}
WORK=${WORK:-/tmp/rackvault-bench/chunks}
(cd "$ROOT" && cargo build --release -p rackvault --quiet)
RV=$ROOT/target/release/rackvault
mkdir -p "$WORK"
BASE=$WORK/base-${SIZE_MIB}M.img
[[ -f $BASE ]] || "$HERE/gen_vmdisk.sh" create "$BASE" "$SIZE_MIB" 42 >&2
echo "| chunk size | full backup s | full MB/s | store after full MiB | growth from 1% change MiB | chunks indexed | index MiB per TiB |"
echo "|---|---|---|---|---|---|---|"
for cs in $SIZES; do
	rm -rf "$WORK/store" "$WORK/src.img"
	cp --sparse=always "$BASE" "$WORK/src.img"
	cat "$WORK/src.img" >/dev/null
	full=$("$RV" backup "$WORK/src.img" --store "$WORK/store" --name vm --chunk-size "$cs" --json)
	after_full=$("$RV" list --store "$WORK/store" --json)
	"$HERE/gen_vmdisk.sh" mutate "$WORK/src.img" 1 1 42 >/dev/null
	incr=$("$RV" backup "$WORK/src.img" --store "$WORK/store" --name vm --chunk-size "$cs" --json)
	after_incr=$("$RV" list --store "$WORK/store" --json)
	python3 - "$cs" "$full" "$after_full" "$incr" "$after_incr" <<'PY'
import json, sys
cs, full, af, incr, ai = sys.argv[1], *map(json.loads, sys.argv[2:])
u0, u1 = af["usage"], ai["usage"]
tib = 2**40 / full["bytes_logical"]
# metadata per TiB: the LMDB file (chunk index, catalog) plus the tree nodes of one full image
tree = full["tree_nodes_new"] * (64 + 16 + 64 * 32)
meta = (u0["index_bytes"] + tree) * tib
print(f"| {cs} | {full['duration_s']:.2f} | {full['bytes_logical']/1e6/full['duration_s']:.0f} | {u0['pack_bytes']/2**20:.1f} | "
      f"{(u1['pack_bytes']-u0['pack_bytes'])/2**20:.1f} | {u0['chunks']} | {meta/2**20:.0f} |")
PY
done
