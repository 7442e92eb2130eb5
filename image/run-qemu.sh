#!/usr/bin/env bash
# Boot a built appliance image in qemu, with UEFI (OVMF), from a copy-on-write overlay so the
# built image stays as it is:
#   image/run-qemu.sh [OUT_DIR] [--port 8443] [--disk-gib 16]
# OUT_DIR is image/build.sh's output directory (default target/image). The UI is then on
# https://127.0.0.1:PORT/; the console (setup code, fingerprint) is on this terminal. Ctrl-A X
# stops the machine. Software emulation (TCG) by default; --kvm uses KVM (some nested KVM
# devices hang a stock kernel, so it is not the default).
# The overlay and the UEFI variables live in OUT_DIR/run/ and survive a restart; remove that
# directory for a new appliance.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=target/image port=8443 gib=16 accel=tcg
while (($#)); do
	case $1 in
	--port) port=$2; shift 2 ;;
	--disk-gib) gib=$2; shift 2 ;;
	--kvm) accel=kvm; shift ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) out=$1; shift ;;
	esac
done
[[ -e $out/rackvault.qcow2 ]] || { echo "image/run-qemu.sh: no image in $out: run image/build.sh --out $out" >&2; exit 1; }
for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd; do
	[[ -e $f ]] || { echo "image/run-qemu.sh: $f is missing: apt-get install ovmf qemu-system-x86" >&2; exit 1; }
done
run=$out/run
mkdir -p "$run"
[[ -e $run/disk.qcow2 ]] || qemu-img create -q -f qcow2 -F qcow2 -b "$(realpath "$out/rackvault.qcow2")" "$run/disk.qcow2" "${gib}G"
[[ -e $run/OVMF_VARS.fd ]] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$run/OVMF_VARS.fd"
exec qemu-system-x86_64 -machine q35 -accel "$accel" -m 2048 -smp 2 -nographic \
	-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
	-drive if=pflash,format=raw,file="$run/OVMF_VARS.fd" \
	-drive file="$run/disk.qcow2",if=virtio,format=qcow2 \
	-netdev user,id=n0,hostfwd=tcp:127.0.0.1:"$port"-:443 -device virtio-net-pci,netdev=n0
