# rackvault with an encrypted store (AES-256-GCM where the CPU has AES-NI), as restic and borg
# (repokey) encrypt theirs: a peer-bench.sh hook tool beside rackvault.tool
# (TOOL_FILES="tests/bench/rackvault.tool tests/bench/rackvault-encrypted.tool"). The recovery
# key file lies beside the store and is made anew each run.
TOOL_NAME=rackvault-encrypted
TOOL_INIT='rm -f "$REPO.key"'
TOOL_BACKUP='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json --encrypt --key-file "$REPO.key" $RACKVAULT_BENCH_ARGS'
TOOL_INCR='"$RACKVAULT_BIN" backup "$SRC" --store "$REPO" --name vm --json --key-file "$REPO.key" $RACKVAULT_BENCH_ARGS'
TOOL_AFTER='"$RACKVAULT_BIN" recompress --store "$REPO" --key-file "$REPO.key" --json'
TOOL_RESTORE='"$RACKVAULT_BIN" restore vm --store "$REPO" --key-file "$REPO.key" --to "$DEST/$(basename "$SRC")" --json'
TOOL_VERSION='"$RACKVAULT_BIN" --version'
