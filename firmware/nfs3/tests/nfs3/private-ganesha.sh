#!/usr/bin/env bash
# private-ganesha.sh start|stop-server|start-server|teardown - a private nfs-ganesha for the
# restart test, so that stopping it disturbs nobody.
#
# Why a network namespace: ganesha registers NFS and MOUNT with rpcbind at start (first
# unregistering whatever is there) and unregisters at exit, and refuses to start without
# rpcbind. A second instance on the shared rpcbind would steal and then delete the shared
# instance's registrations. So the private one runs in its own network and mount namespace
# (`unshare --net --mount`, a tmpfs on /run for a private /run/rpcbind.sock) with its own
# rpcbind, started by tests/peers/start-nfs-ganesha.sh as usual. The test reaches it through
# unix sockets in $DIR (bridge.py, running in the namespace), so it uses fixed ports and
# not the portmapper.
#
# Environment: RV_NFS3_PRIV_DIR (default /tmp/rackvault-peers/nfs3-private). Needs root.
# Processes are stopped by the PIDs recorded in $DIR only.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PEERS=$(cd "$HERE/../../../../tests/peers" && pwd)
DIR=${RV_NFS3_PRIV_DIR:-/tmp/rackvault-peers/nfs3-private}
PORTS=(RV_NFS_DIR="$DIR" RV_NFS_PORT=22049 RV_NFS_MOUNT_PORT=22048 RV_NFS_SIZE_MB=64 RV_NFS_VERSIONS=3)
ns() { nsenter -t "$(<"$DIR/bridge.pid")" --net --mount "$@"; }
case ${1:-} in
start)
	mkdir -p "$DIR"
	rm -f "$DIR/env" "$DIR/nfs.sock" "$DIR/mnt.sock"
	setsid unshare --net --mount --propagation private bash -c '
		set -e
		py=$1; shift
		ip link set lo up
		mount -t tmpfs tmpfs /run
		env "$@" >"$0/start.log" 2>&1 || { cat "$0/start.log" >&2; exit 1; }
		exec python3 "$py" "$0" 22049 22048 </dev/null >>"$0/bridge.log" 2>&1
	' "$DIR" "$HERE/bridge.py" "${PORTS[@]}" "$PEERS/start-nfs-ganesha.sh" &
	echo $! >"$DIR/bridge.pid"
	for _ in $(seq 1 600); do
		[[ -S $DIR/mnt.sock && -s $DIR/env ]] && exit 0
		kill -0 "$(<"$DIR/bridge.pid")" 2>/dev/null || { cat "$DIR/start.log" >&2; exit 1; }
		sleep 0.1
	done
	echo "private ganesha did not come up" >&2; exit 1 ;;
stop-server) ns env "${PORTS[@]}" "$PEERS/stop-nfs-ganesha.sh" ;;
start-server) ns env "${PORTS[@]}" "$PEERS/start-nfs-ganesha.sh" >"$DIR/restart.log" 2>&1 ;;
teardown)
	[[ -s $DIR/bridge.pid ]] || exit 0
	ns env "${PORTS[@]}" "$PEERS/stop-nfs-ganesha.sh" || true
	kill "$(<"$DIR/bridge.pid")" 2>/dev/null || true
	rm -f "$DIR/bridge.pid" ;;
*) echo "usage: $0 start|stop-server|start-server|teardown" >&2; exit 2 ;;
esac
