# rackvault as a peer-bench.sh hook tool (TOOL_FILES=tests/bench/rackvault.tool).
# RACKVAULT_BIN is exported by tests/bench/bench.sh; RACKVAULT_BENCH_ARGS adds backup options.
TOOL_NAME=rackvault
TOOL_INIT='true'
TOOL_BACKUP='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_INCR='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_RESTORE='"$RACKVAULT_BIN" restore vm --store "$REPO" --to "$DEST/$(basename "$SRC")" --json'
TOOL_VERSION='"$RACKVAULT_BIN" --version'
