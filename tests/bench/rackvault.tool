# rackvault as a peer-bench.sh hook tool (TOOL_FILES=tests/bench/rackvault.tool).
# RACKVAULT_BIN is exported by tests/bench/bench.sh; RACKVAULT_BENCH_ARGS adds backup options.
# Backups store data raw for later (the default); the step after the incremental is the
# recompression pass the daemon runs at night, so the restore reads a compressed store and the
# repository size after that step is the store's size in its steady state.
TOOL_NAME=rackvault
TOOL_INIT='true'
TOOL_BACKUP='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_INCR='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json $RACKVAULT_BENCH_ARGS'
TOOL_AFTER='"$RACKVAULT_BIN" recompress --store "$REPO" --json'
TOOL_RESTORE='"$RACKVAULT_BIN" restore vm --store "$REPO" --to "$DEST/$(basename "$SRC")" --json'
TOOL_VERSION='"$RACKVAULT_BIN" --version'
