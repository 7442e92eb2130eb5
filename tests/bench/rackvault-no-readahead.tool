# rackvault with its restore read-ahead off, as a peer-bench.sh hook tool beside
# rackvault.tool (TOOL_FILES="tests/bench/rackvault.tool tests/bench/rackvault-no-readahead.tool"):
# the same backups, and restores that read each pack range only when a worker needs it. Shows
# what the read-ahead (store::Readahead) is worth, in the same run.
TOOL_NAME=rackvault-no-readahead
TOOL_INIT='true'
TOOL_BACKUP='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_INCR='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_AFTER='"$RACKVAULT_BIN" recompress --store "$REPO" --json'
TOOL_RESTORE='"$RACKVAULT_BIN" restore vm --store "$REPO" --to "$DEST/$(basename "$SRC")" --json --no-read-ahead'
TOOL_VERSION='"$RACKVAULT_BIN" --version'
