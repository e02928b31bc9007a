#!/usr/bin/env bash
# Runs a command inside an arm64 root made by sysroot.sh, as on the device: in a mount and PID
# namespace of its own (its /proc, /sys and /dev go away with it, and stopping this script stops
# every process it started), with a clean environment.
#   tests/arm64/chroot.sh [--offline] ROOT COMMAND...
#   --offline   no network at all (a network namespace with nothing in it, not even loopback)
#   QEMU_CPU    the emulated core: cortex-a76 (Raspberry Pi 5, the default) or cortex-a72 (Pi 4).
#               /proc/cpuinfo is that Pi's (cpuinfo/CORE): QEMU 7.2 shows the host's x86 one, on
#               which onnxruntime's aarch64 build crashes at import.
# Extra variables for COMMAND: CHROOT_ENV="NAME=VALUE ...".
set -euo pipefail

network=()
if [ "${1:-}" = --offline ]; then
    network=(--net)
    shift
fi
root="${1:?usage: chroot.sh [--offline] ROOT COMMAND...}"
shift
export QEMU_CPU="${QEMU_CPU:-cortex-a76}"
cpuinfo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cpuinfo/$QEMU_CPU"
[ -f "$cpuinfo" ] || {
    echo "chroot.sh: QEMU_CPU=$QEMU_CPU: no Raspberry Pi has that core (cpuinfo/ lists the ones that do)" >&2
    exit 2
}
[ -x "$root/usr/bin/python3" ] || {
    echo "chroot.sh: $root is not a root made by sysroot.sh" >&2
    exit 2
}
# shellcheck disable=SC2016 # expanded by the inner bash
exec unshare --mount --pid --fork --kill-child "${network[@]}" -- bash -c '
    set -e
    root="$1"
    cpuinfo="$2"
    shift 2
    mount --make-rprivate /
    mount -t proc proc "$root/proc"
    mount --bind "$cpuinfo" "$root/proc/cpuinfo"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    # shellcheck disable=SC2086 # CHROOT_ENV is a list of NAME=VALUE words
    exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" ${CHROOT_ENV:-} "$@"
' chroot.sh "$root" "$cpuinfo" "$@"
