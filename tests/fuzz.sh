#!/usr/bin/env bash
# tests/fuzz.sh - build every cargo-fuzz target and run each one for a short, bounded time, so
# the targets keep building and keep looking for crashes on every CI run.
#   ./tests/fuzz.sh                  all targets, RV_FUZZ_SECS (25) seconds each
#   ./tests/fuzz.sh disk/formats/qcow2   only the fuzz crates under these folders
#
# Targets are discovered, not listed: every */*/fuzz/Cargo.toml and */*/*/fuzz/Cargo.toml is a
# cargo-fuzz crate (its own
# workspace, outside the main one) and `cargo fuzz list` names its targets, so a new fuzz crate
# or target is picked up without touching this script.
#
# Works on the stable toolchain: cargo fuzz passes nightly-only flags (-Zsanitizer=address,
# -Z options to cargo), which RUSTC_BOOTSTRAP=1 allows on stable. cargo-fuzz is installed with
# `cargo install --locked` when missing (about 30 s of build). All fuzz crates share one
# target directory, so common dependencies (libfuzzer-sys and its C++ runtime, zstd, ...)
# are built once; each fuzz crate without a Cargo.lock gets a copy of the workspace's, so they
# resolve to the same versions as the main build (fuzz/Cargo.lock is ignored by git).
#
# Each run starts from a fresh temporary corpus, seeded from the fuzz crate's seeds/<target>
# and corpus/<target> folders when they exist (corpus/ stays local: it is ignored by git).
# libFuzzer runs one thread, so RV_FUZZ_JOBS targets (default: one per core) run side by side,
# each from its own copy of its binary.
# A crash, a leak, an input slower than RV_FUZZ_INPUT_TIMEOUT seconds or more memory than
# RV_FUZZ_RSS_MB fails the target; the failing input is kept under fuzz/artifacts/<target>/
# and printed (base64) in the log.
#
# Environment (all optional):
#   RV_FUZZ_SECS (25)            fuzzing time per target (libFuzzer -max_total_time)
#   RV_FUZZ_INPUT_TIMEOUT (20)   longest time one input may take (libFuzzer -timeout)
#   RV_FUZZ_RSS_MB (2048)        memory limit per fuzzing process (libFuzzer -rss_limit_mb)
#   RV_FUZZ_TARGET_DIR (target/fuzz)  the shared cargo target directory
#   RV_FUZZ_LOG_DIR (a new temporary folder)  per-target build and run logs
#   RV_FUZZ_JOBS (nproc)         targets fuzzed at the same time
#   RV_FUZZ_TOOLCHAIN            e.g. "nightly": run `cargo +nightly` instead of the default
# Exit status 0 only if every fuzz crate built and every target ran without a finding. The
# last line reads "fuzz: N targets passed, M failed".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

SECS=${RV_FUZZ_SECS:-25}
INPUT_TIMEOUT=${RV_FUZZ_INPUT_TIMEOUT:-20}
RSS_MB=${RV_FUZZ_RSS_MB:-2048}
CARGO_FUZZ_VERSION=0.13.2
export CARGO_TARGET_DIR=${RV_FUZZ_TARGET_DIR:-$ROOT/target/fuzz}
export RUSTC_BOOTSTRAP=1
LOG_DIR=${RV_FUZZ_LOG_DIR:-$(mktemp -d /tmp/rackvault-fuzz.XXXXXX)}
mkdir -p "$LOG_DIR"
CARGO=(cargo)
[[ -n ${RV_FUZZ_TOOLCHAIN:-} ]] && CARGO=(cargo "+$RV_FUZZ_TOOLCHAIN")

log() { printf '[fuzz] %s\n' "$*" >&2; }
secs_since() { echo $(($(date +%s) - $1)); }
START=$(date +%s)

command -v cargo >/dev/null || { log "cargo not found; install the Rust toolchain (rustup) first"; exit 1; }
if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
	log "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked)"
	"${CARGO[@]}" install --locked --quiet "cargo-fuzz@$CARGO_FUZZ_VERSION" ||
		{ log "could not install cargo-fuzz; check that crates.io is reachable"; exit 1; }
fi

# ---- discover ------------------------------------------------------------------------------
crates=()
if (($#)); then
	for d in "$@"; do
		d=${d%/}
		[[ $d == */fuzz ]] || d=$d/fuzz
		[[ -f $d/Cargo.toml ]] || { log "$d/Cargo.toml not found"; exit 1; }
		crates+=("$d")
	done
else
	for toml in */*/fuzz/Cargo.toml */*/*/fuzz/Cargo.toml; do
		[[ -f $toml ]] && crates+=("${toml%/Cargo.toml}")
	done
fi
((${#crates[@]})) || { log "no fuzz crates found (*/*/fuzz/Cargo.toml, */*/*/fuzz/Cargo.toml)"; exit 1; }

failed=()   # "crate[ target]: what" entries
passed=0
declare -A targets_of=()
HOST=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$LOG_DIR/bin
mkdir -p "$BIN_DIR"

# ---- build: every crate, all its targets; a crate that does not build fails the run ----------
for c in "${crates[@]}"; do
	name=${c//\//-}
	if [[ ! -f $c/Cargo.lock ]]; then
		cp Cargo.lock "$c/Cargo.lock"
	fi
	if ! list=$(cd "$c" && "${CARGO[@]}" fuzz list 2>"$LOG_DIR/$name.list.log"); then
		log "FAILED: $c: cargo fuzz list failed:"
		cat "$LOG_DIR/$name.list.log" >&2
		failed+=("$c (list)")
		continue
	fi
	if [[ -z $list ]]; then
		log "FAILED: $c has no fuzz targets ([[bin]] entries)"
		failed+=("$c (no targets)")
		continue
	fi
	t0=$(date +%s)
	log "building $c ($(echo $list))"
	if ! (cd "$c" && "${CARGO[@]}" fuzz build) >"$LOG_DIR/$name.build.log" 2>&1; then
		log "FAILED: $c does not build:"
		# the compiler's errors, not cargo-fuzz's backtrace after them
		if grep -q '^error' "$LOG_DIR/$name.build.log"; then
			sed -n '/^error/,$p' "$LOG_DIR/$name.build.log" | head -n 80 >&2
		else
			tail -n 60 "$LOG_DIR/$name.build.log" >&2
		fi
		failed+=("$c (build)")
		continue
	fi
	# Targets of different crates may share a name (open_and_read): keep a copy of each
	# binary under a unique name before the next crate's build overwrites it.
	for t in $list; do
		cp "$CARGO_TARGET_DIR/$HOST/release/$t" "$BIN_DIR/$name-$t"
	done
	log "built $c in $(secs_since "$t0") s"
	targets_of[$c]=$list
done
BUILT=$(date +%s)

# ---- run: each target for SECS seconds from a fresh corpus, JOBS at a time -------------------
# libFuzzer runs one thread, so JOBS (default: the number of cores) targets run side by side.
JOBS=${RV_FUZZ_JOBS:-$(nproc)}
run_one() { # CRATE TARGET NAME: runs the target's copied binary; the exit status is libFuzzer's
	local c=$1 t=$2 name=$3 corpus s seeds=()
	corpus=$(mktemp -d "/tmp/rackvault-fuzz-corpus.$t.XXXXXX")
	for s in "$c/seeds/$t" "$c/corpus/$t"; do
		[[ -d $s ]] && seeds+=("$ROOT/$s")
	done
	mkdir -p "$c/artifacts/$t"
	# The outer timeout only catches a fuzzer that ignores -max_total_time; libFuzzer's own
	# -timeout reports a slow input first.
	local rc=0
	# ASAN_OPTIONS as cargo fuzz run sets them.
	(cd "$c" && ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} timeout --kill-after=10 $((SECS + INPUT_TIMEOUT + 60)) "$BIN_DIR/$name" \
		-max_total_time="$SECS" -timeout="$INPUT_TIMEOUT" -rss_limit_mb="$RSS_MB" \
		-artifact_prefix="$ROOT/$c/artifacts/$t/" -print_final_stats=1 \
		"$corpus" "${seeds[@]}") >"$LOG_DIR/$name.run.log" 2>&1 || rc=$?
	echo "$rc $(find "$corpus" -type f | wc -l)" >"$LOG_DIR/$name.rc"
	rm -rf "$corpus"
	return "$rc"
}
runs=() # "crate target name" in order
for c in "${crates[@]}"; do
	[[ -n ${targets_of[$c]:-} ]] || continue
	for t in ${targets_of[$c]}; do
		runs+=("$c $t ${c//\//-}-$t")
	done
done
declare -A before=()
for r in "${runs[@]}"; do
	read -r c t name <<<"$r"
	mkdir -p "$c/artifacts/$t"
	before[$name]=$(find "$c/artifacts/$t" -type f | sort)
	while (($(jobs -rp | wc -l) >= JOBS)); do wait -n || true; done
	log "running $c $t for ${SECS} s"
	run_one "$c" "$t" "$name" &
done
wait || true

for r in "${runs[@]}"; do
	read -r c t name <<<"$r"
	read -r rc corpus_files <"$LOG_DIR/$name.rc" || rc=1
	if ((rc == 0)); then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG_DIR/$name.run.log" | tail -n 1)
		log "ok: $c $t (${execs:-?} inputs run, corpus grew to ${corpus_files:-?})"
		passed=$((passed + 1))
	else
		log "FAILED: $c $t (exit status $rc); last lines of its log:"
		tail -n 60 "$LOG_DIR/$name.run.log" >&2
		new=$(comm -13 <(echo "${before[$name]}") <(find "$c/artifacts/$t" -type f | sort) | sed '/^$/d')
		for a in $new; do
			log "failing input $a ($(stat -c %s "$a") bytes); reproduce with: (cd $c && cargo fuzz run $t ${a#"$c"/})"
			if (($(stat -c %s "$a") <= 65536)); then
				log "its base64: $(base64 -w0 "$a")"
			fi
		done
		failed+=("$c $t")
	fi
done

rm -rf "$BIN_DIR" # copies of binaries that stay in the target directory
log "build $((BUILT - START)) s, runs $(secs_since "$BUILT") s, total $(secs_since "$START") s; logs in $LOG_DIR"
if ((${#failed[@]})); then
	log "failed: ${failed[*]}"
fi
echo "fuzz: $passed targets passed, ${#failed[@]} failed"
((${#failed[@]} == 0))
