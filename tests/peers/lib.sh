# shellcheck shell=bash
# lib.sh - helpers shared by the peer scripts of the rackvault test harness (tests/peers/).
#
# Conventions every start-/stop-/test- script follows (see README.md):
#   * working directory  $RV_<PEER>_DIR, default $RV_PEERS_ROOT/<peer>, RV_PEERS_ROOT=/tmp/rackvault-peers
#   * Debian packages are installed only when missing (apt-get -o DPkg::Lock::Timeout=600,
#     "apt-get update" and one retry when the first install fails)
#   * servers listen on 127.0.0.1 / ::1 or on unix sockets only
#   * every daemon started gets  $DIR/<daemon>.pid  (the PID) and  $DIR/<daemon>.pid.stime
#     (its start time in clock ticks since boot, from /proc/PID/stat) so that a stop script
#     never signals a recycled PID
#   * $DIR/env holds KEY='value' lines (single-quoted, values never contain a quote) that a
#     test can `source` or parse; it is written atomically once the server answers
#   * stop scripts signal only the PIDs recorded in their pid files: TERM, then KILL after
#     RV_STOP_TIMEOUT seconds
set -o pipefail
set +m   # no job control: "setsid CMD &" must exec CMD in place so that $! is the daemon

RV_PEERS_ROOT=${RV_PEERS_ROOT:-/tmp/rackvault-peers}
RV_KIT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RV_STOP_TIMEOUT=${RV_STOP_TIMEOUT:-10}

rv_log() { printf '[%s] %s\n' "${RV_NAME:-rackvault-peers}" "$*" >&2; }
rv_die() { rv_log "ERROR: $*"; exit 1; }
rv_require_root() { [[ $(id -u) == 0 ]] || rv_die "must run as root"; }

# ---- packages ---------------------------------------------------------------------------
rv_pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# rv_apt_install PKG[=VERSION]... : install those that are not installed yet.
rv_apt_install() {
	local missing=() p log
	for p in "$@"; do rv_pkg_installed "${p%%=*}" || missing+=("$p"); done
	((${#missing[@]})) || return 0
	mkdir -p "$RV_PEERS_ROOT"
	log=$RV_PEERS_ROOT/apt-${RV_NAME:-peers}.log
	rv_log "installing ${missing[*]} (log: $log)"
	local apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >"$log" 2>&1; then
		rv_log "install failed, running apt-get update and retrying"
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >>"$log" 2>&1 || true
		DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >>"$log" 2>&1 ||
			{ tail -20 "$log" >&2; rv_die "apt-get install ${missing[*]} failed"; }
	fi
}

# ---- processes ----------------------------------------------------------------------------
# start time of PID in clock ticks since boot (field 22 of /proc/PID/stat; comm may hold spaces)
rv_proc_stime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }

# rv_pid_save PIDFILE PID
rv_pid_save() { echo "$2" >"$1"; rv_proc_stime "$2" >"$1.stime" || true; }

# rv_pid_alive PIDFILE : true if the process recorded there is still the same, live process
# (a zombie counts as gone: an init that reaps late leaves exited daemons as zombies)
rv_pid_alive() {
	local f=$1 pid s
	[[ -s $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	s=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	s=${s##*) }
	set -- $s
	[[ $1 != Z && $1 != X ]] || return 1
	if [[ -s $f.stime ]]; then [[ ${20} == "$(<"$f.stime")" ]] || return 1; fi
	return 0
}

# rv_spawn PIDFILE LOGFILE CMD... : run CMD detached in its own session, record its PID.
# Sets RV_SPAWNED_PID.
rv_spawn() {
	local pidf=$1 logf=$2; shift 2
	setsid "$@" </dev/null >>"$logf" 2>&1 &
	RV_SPAWNED_PID=$!
	rv_pid_save "$pidf" "$RV_SPAWNED_PID"
}

# rv_stop_pidfile PIDFILE [TIMEOUT] : TERM the recorded process, KILL it after TIMEOUT s.
rv_stop_pidfile() {
	local f=$1 to=${2:-$RV_STOP_TIMEOUT} pid i
	[[ -e $f ]] || return 0
	if ! rv_pid_alive "$f"; then
		rv_log "$(basename "$f"): process $(cat "$f" 2>/dev/null) is gone - removing the pid file"
		rm -f "$f" "$f.stime"; return 0
	fi
	pid=$(<"$f")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < to * 10; i++)); do rv_pid_alive "$f" || break; sleep 0.1; done
	if rv_pid_alive "$f"; then
		rv_log "$(basename "$f"): pid $pid still alive ${to}s after TERM - KILL"
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do rv_pid_alive "$f" || break; sleep 0.1; done
	fi
	rv_pid_alive "$f" && { rv_log "could not stop pid $pid"; return 1; }
	rv_log "stopped $(basename "$f" .pid) pid $pid"
	rm -f "$f" "$f.stime"
}

# rv_wait SECONDS CMD... : poll CMD every 0.1 s until it succeeds; fails after SECONDS.
# With RV_WAIT_PIDFILE set, fails at once if that process died.
rv_wait() {
	local t=$1 i; shift
	for ((i = 0; i < t * 10; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		[[ -n ${RV_WAIT_PIDFILE:-} ]] && ! rv_pid_alive "$RV_WAIT_PIDFILE" && return 1
		sleep 0.1
	done
	return 1
}

# ---- ports --------------------------------------------------------------------------------
rv_tcp_port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
rv_require_free_tcp_ports() {
	local p
	for p in "$@"; do
		rv_tcp_port_busy "$p" && { ss -ltnp "sport = :$p" >&2; rv_die "TCP port $p is already in use"; }
	done
	return 0
}

# ---- env file ------------------------------------------------------------------------------
# rv_env_open FILE ; rv_env KEY VALUE ... ; rv_env_close   (atomic rename at close)
rv_env_open() { RV_ENV_FILE=$1; : >"$RV_ENV_FILE.tmp"; }
rv_env() {
	[[ $2 != *"'"* ]] || rv_die "env value for $1 contains a single quote"
	printf "%s='%s'\n" "$1" "$2" >>"$RV_ENV_FILE.tmp"
}
rv_env_close() { mv -f "$RV_ENV_FILE.tmp" "$RV_ENV_FILE"; }

# ---- tests -----------------------------------------------------------------------------------
# rv_ok / rv_fail DESCRIPTION ; rv_check DESCRIPTION CMD... ; rv_expect DESCRIPTION REGEX CMD...
# rv_summary prints the final "N passed, M failed" line and returns 1 if anything failed.
RV_PASS=0 RV_FAIL=0
rv_ok() { RV_PASS=$((RV_PASS + 1)); echo "ok - $*"; }
rv_fail() { RV_FAIL=$((RV_FAIL + 1)); echo "not ok - $*"; }
rv_check() { local d=$1; shift; if "$@"; then rv_ok "$d"; else rv_fail "$d"; fi; }
rv_expect() {
	local d=$1 re=$2 out; shift 2
	out=$("$@" 2>&1) || true
	if grep -Eq -- "$re" <<<"$out"; then rv_ok "$d"; else
		rv_fail "$d (wanted /$re/)"; sed 's/^/    # /' <<<"$out" | tail -15
	fi
}
rv_summary() { echo "$RV_PASS passed, $RV_FAIL failed"; ((RV_FAIL == 0)); }
rv_ms() { date +%s%3N; }

# ---- probes (reference C tools linked against libiscsi) -----------------------------------------
# rv_build_probe NAME : compile probe/NAME.c into $RV_PROBE_BIN (default $RV_PEERS_ROOT/probe-bin)
rv_build_probe() {
	local bin=${RV_PROBE_BIN:-$RV_PEERS_ROOT/probe-bin}
	RV_PROBE=$bin/$1
	[[ -x $RV_PROBE && $RV_PROBE -nt $RV_KIT_DIR/probe/$1.c ]] && return 0
	rv_apt_install gcc libc6-dev pkg-config libiscsi-dev
	mkdir -p "$bin"
	# shellcheck disable=SC2046
	gcc -O2 -Wall -o "$RV_PROBE" "$RV_KIT_DIR/probe/$1.c" $(pkg-config --cflags --libs libiscsi) ||
		rv_die "building probe $1 failed"
}

# ---- tgtd ----------------------------------------------------------------------------------------
# rv_tgt_stop PIDFILE CTL : tgtd ignores TERM while targets exist, so take targets offline,
# force-delete them and ask the daemon to exit ("--op delete --mode system"); TERM/KILL by
# PID file only as the fallback.
rv_tgt_stop() {
	local pidf=$1 ctl=$2 pid tid T
	if rv_pid_alive "$pidf"; then
		pid=$(<"$pidf")
		if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-C $ctl "; then
			rv_die "pid $pid does not use control socket $ctl - refusing"
		fi
		T=(tgtadm -C "$ctl" --lld iscsi)
		"${T[@]}" --op update --mode sys --name State -v offline >/dev/null 2>&1 || true
		for tid in $("${T[@]}" --op show --mode target 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
			"${T[@]}" --op delete --force --mode target --tid "$tid" >/dev/null 2>&1 || true
		done
		tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
		local i
		for ((i = 0; i < 50; i++)); do rv_pid_alive "$pidf" || break; sleep 0.1; done
		if ! rv_pid_alive "$pidf"; then
			rv_log "stopped tgtd pid $pid"; rm -f "$pidf" "$pidf.stime"
		fi
	fi
	rv_stop_pidfile "$pidf" || return 1
	rm -f "/run/tgtd/socket.$ctl" "/run/tgtd/socket.$ctl.lock"
}

# rv_check_loopback_only PID... : one test line - every TCP/UDP socket these processes
# listen on is bound to 127.0.0.0/8 or ::1.  In a network namespace without any global
# address (hermetic.sh) wildcard binds reach loopback only and are accepted too.
rv_check_loopback_only() {
	local pid bad=() a n=0 ok_re='^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+$' where="on loopback"
	if ! ip -o addr show scope global 2>/dev/null | grep -q .; then
		ok_re='^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]|\*|0\.0\.0\.0|\[::\]):[0-9]+$'
		where="on loopback (namespace without global addresses)"
	fi
	for pid in "$@"; do
		while read -r a; do
			n=$((n + 1))
			[[ $a =~ $ok_re ]] || bad+=("$a")
		done < <(ss -Hlntup 2>/dev/null | grep -E "pid=$pid," | awk '{print $5}')
	done
	if ((${#bad[@]})); then rv_fail "non-loopback listeners of pid $*: ${bad[*]}"
	else rv_ok "all $n TCP/UDP listeners of pid $* are $where"; fi
}
