# rackvault compressing during the backup (--compress-now), as before compression moved off
# the critical path: a peer-bench.sh hook tool beside rackvault.tool
# (TOOL_FILES="tests/bench/rackvault.tool tests/bench/rackvault-inline.tool"). Shows in the
# same run what deferring the compression is worth, and the store size to compare with the
# recompressed one.
TOOL_NAME=rackvault-inline
TOOL_INIT='true'
TOOL_BACKUP='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json --compress-now $RACKVAULT_BENCH_ARGS'
TOOL_INCR='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json --compress-now $RACKVAULT_BENCH_ARGS'
TOOL_RESTORE='"$RACKVAULT_BIN" restore vm --store "$REPO" --to "$DEST/$(basename "$SRC")" --json'
TOOL_VERSION='"$RACKVAULT_BIN" --version'
