#!/usr/bin/env bash
# Side-by-side benchmark of appliance-to-appliance replication over loopback HTTPS, in one run:
#   rackvault replicate: a point of the deterministic VM disk (tests/bench/gen_vmdisk.sh) from a
#     store to a fresh `rackvault serve` (a new data directory per run, so everything is sent);
#   the baseline: curl downloading a file of the same logical size over HTTPS from
#     `openssl s_server -WWW` (TLS 1.3, AES-256-GCM) on loopback, written to disk.
# Both are timed wall clock, RUNS times; prints each run and the medians, and the ratio
# (baseline time / replication time; the issue's target is >= 0.8).
#
#   tests/bench/replication-bench.sh                 # 2 GiB, 3 runs
#   SIZE_MIB=256 RUNS=1 tests/bench/replication-bench.sh
# Only loopback; every process started here is stopped by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MIB=${SIZE_MIB:-2048}
RUNS=${RUNS:-3}
WORK=$(mktemp -d /tmp/rackvault-replbench.XXXXXX)
PIDS=()
cleanup() {
	# Receivers are started inside a process substitution, a subshell: their PIDs are in files.
	for f in "$WORK"/*.pid; do [ -e "$f" ] && PIDS+=("$(cat "$f")"); done
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

(cd "$ROOT" && cargo build --release -p rackvault --quiet)
RV=$ROOT/target/release/rackvault
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== corpus: ${SIZE_MIB} MiB" >&2
"$HERE/gen_vmdisk.sh" create "$WORK/vm.img" "$SIZE_MIB" 42 >/dev/null
"$RV" backup "$WORK/vm.img" --store "$WORK/a" --name vm --json >"$WORK/backup.json"
STORED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_written"])' "$WORK/backup.json")

# A fresh receiving appliance with an admin and a replication token; prints PORT TOKEN.
receiver() {
	local data=$1 port
	port=$(free_port)
	"$RV" serve --data-dir "$data" --listen "127.0.0.1:$port" >"$data.log" 2>&1 &
	echo $! >"$data.pid"
	for _ in $(seq 1 100); do
		[ -s "$data/setup-code" ] && curl -sk "https://127.0.0.1:$port/api/v1/setup" >/dev/null 2>&1 && break
		sleep 0.1
	done
	local base="https://localhost:$port" res="--resolve localhost:$port:127.0.0.1"
	local code
	code=$(cat "$data/setup-code")
	curl -sk $res -H 'Content-Type: application/json' -d "{\"user\":\"admin\",\"password\":\"bench-passphrase-1\",\"setup_code\":\"$code\"}" "$base/api/v1/setup" >/dev/null
	local csrf
	csrf=$(curl -sk $res -c "$data.cookies" -H 'Content-Type: application/json' \
		-d '{"user":"admin","password":"bench-passphrase-1"}' "$base/api/v1/login" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf"])')
	local token
	token=$(curl -sk $res -b "$data.cookies" -H "X-CSRF-Token: $csrf" -H "Origin: $base" -H 'Content-Type: application/json' \
		-d '{"name":"bench","role":"replication"}' "$base/api/v1/tokens" |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
	echo "$port $token"
}

# The baseline's server: a file of the same logical size, served by openssl over TLS 1.3.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
	-keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
mkdir -p "$WORK/www"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$WORK/www/file.bin"
SPORT=$(free_port)
(cd "$WORK/www" && exec openssl s_server -quiet -WWW -accept "127.0.0.1:$SPORT" -cert "$WORK/cert.pem" -key "$WORK/key.pem" -tls1_3) &
PIDS+=($!)
sleep 0.5

now() { python3 -c 'import time; print(time.monotonic())'; }
declare -a REPL CURL
for run in $(seq 1 "$RUNS"); do
	read -r port token < <(receiver "$WORK/b$run")
	echo "$token" >"$WORK/token$run"
	fp=$("$RV" remote-fingerprint "https://127.0.0.1:$port")
	sync
	t0=$(now)
	"$RV" replicate vm --store "$WORK/a" --to "https://127.0.0.1:$port" --fingerprint "$fp" \
		--token-file "$WORK/token$run" --namespace bench --json >"$WORK/repl$run.json"
	t1=$(now)
	rm -f "$WORK/dl.bin"
	sync
	t2=$(now)
	curl -sk --tlsv1.3 -o "$WORK/dl.bin" "https://127.0.0.1:$SPORT/file.bin"
	sync "$WORK/dl.bin"
	t3=$(now)
	r=$(python3 -c "print(round($t1-$t0,3))")
	c=$(python3 -c "print(round($t3-$t2,3))")
	sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_sent"])' "$WORK/repl$run.json")
	echo "run $run: replicate ${r} s (${sent} bytes sent), curl download ${c} s" >&2
	REPL+=("$r")
	CURL+=("$c")
	rm -rf "$WORK/dl.bin"
done
python3 - "$SIZE_MIB" "$STORED" "${REPL[*]}" "${CURL[*]}" <<'PY'
import statistics as st, sys
size, stored = int(sys.argv[1]), int(sys.argv[2])
repl = [float(x) for x in sys.argv[3].split()]
curl = [float(x) for x in sys.argv[4].split()]
r, c = st.median(repl), st.median(curl)
print(f"| point | stored (sent) | replicate, median | curl download of {size} MiB, median | ratio (curl time / replicate time) |")
print("|---|---|---|---|---|")
print(f"| {size} MiB | {stored/2**20:.0f} MiB | {r:.2f} s ({size/r:.0f} MiB/s logical, {stored/2**20/r:.0f} MiB/s sent) | {c:.2f} s ({size/c:.0f} MiB/s) | {c/r:.2f} |")
PY
