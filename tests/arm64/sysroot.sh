#!/usr/bin/env bash
# Makes an arm64 Debian root that runs a bundle's install.sh and run.sh as a Raspberry Pi would,
# under QEMU user emulation (binfmt_misc with the F flag, so it runs in a chroot).
#   tests/arm64/sysroot.sh SUITE DEST    SUITE: trixie (CPython 3.13) or bookworm (3.11)
# DEST/root is the root, DEST/apt apt's own lists and downloads for it (the host's apt is untouched:
# no foreign architecture added, no sources changed). Run again, it does nothing unless this file
# changed. Needs root, apt-get and Debian's archive; when something is missing it says so in one
# line on stderr and exits 3.
set -euo pipefail

suite="${1:?usage: sysroot.sh SUITE DEST}"
dest="${2:?usage: sysroot.sh SUITE DEST}"
mkdir -p "$dest" && dest="$(cd "$dest" && pwd)" # apt reads relative paths from /
mirror="${ARM64_MIRROR:-http://deb.debian.org/debian}"
# What install.sh and run.sh call, the Python they make the virtualenv with, and the C++ runtime
# every Raspberry Pi OS image has (numpy's and onnxruntime's wheels link it); apt adds the rest.
packages=(base-files base-passwd bash coreutils util-linux passwd python3 python3-venv libstdc++6)

cant() {
    echo "cannot make the arm64 root: $*" >&2
    exit 3
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp="$dest/root/.sysroot-stamp"
want="$suite $(sha256sum "$here/sysroot.sh" | cut -d' ' -f1)"
[ "$(id -u)" = 0 ] || cant "needs root (binfmt_misc registration and chroot)"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || cant "needs apt-get and dpkg-deb (Debian)"
if ! command -v qemu-aarch64-static >/dev/null || ! command -v update-binfmts >/dev/null; then
    echo "sysroot.sh: installing qemu-user-static and binfmt-support" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        qemu-user-static binfmt-support; } >&2 || cant "apt-get install qemu-user-static binfmt-support failed"
fi
if [ ! -f /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null ||
        cant "binfmt_misc cannot be mounted here (a container without the privilege?)"
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null ||
    cant "qemu-aarch64 is not registered with binfmt_misc's F flag (update-binfmts --enable qemu-aarch64)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi

apt_dir="$dest/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/parts"
: >"$apt_dir/status" # nothing installed: apt downloads every dependency
echo "deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
    >"$apt_dir/sources.list"
apt=(apt-get -q
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
    -o "Dir::Etc::Preferences=$apt_dir/parts/none" -o "Dir::Etc::PreferencesParts=$apt_dir/parts"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir" -o "Dir::Cache::Archives=$apt_dir/archives"
    -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o APT::Install-Recommends=false
    -o Acquire::Languages=none -o Debug::NoLocking=1)
echo "sysroot.sh: downloading Debian $suite's arm64 packages" >&2
# apt-get update exits 0 when the archive cannot be reached (a warning): what counts is a package list
"${apt[@]}" update >"$apt_dir/update.log" 2>&1
compgen -G "$apt_dir/lists/*_Packages*" >/dev/null ||
    cant "Debian $suite's arm64 packages are not reachable at $mirror: $(grep -m1 -E '^(E|W):' "$apt_dir/update.log" || tail -1 "$apt_dir/update.log")"
"${apt[@]}" -y -d install "${packages[@]}" >"$apt_dir/install.log" 2>&1 ||
    cant "apt cannot download ${packages[*]} for arm64 from $suite: $(grep -m1 '^E:' "$apt_dir/install.log" || tail -1 "$apt_dir/install.log")"

rm -rf "$dest/root.new"
mkdir -p "$dest/root.new"
for deb in "$apt_dir"/archives/*.deb; do
    dpkg-deb -x "$deb" "$dest/root.new"
done
# What the maintainer scripts would have done: the system accounts, shadow files, an empty dpkg
# status, PAM's common configuration, the name resolver's files, the CA bundle.
root="$dest/root.new"
cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd"
cp "$root/usr/share/base-passwd/group.master" "$root/etc/group"
sed 's/:.*/:*:20000:0:99999:7:::/' "$root/etc/passwd" >"$root/etc/shadow"
sed 's/:.*/:*::/' "$root/etc/group" >"$root/etc/gshadow"
chmod 640 "$root/etc/shadow" "$root/etc/gshadow"
mkdir -p "$root/var/lib/dpkg" && : >"$root/var/lib/dpkg/status"
for name in account auth password session session-noninteractive; do
    cp "$root/usr/share/pam/common-$name" "$root/etc/pam.d/" # runuser's PAM stack
done
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
mkdir -p "$root/etc/ssl/certs" # update-ca-certificates' bundle, which Debian's pip reads at start
cat "$root"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
python="$(chroot "$root" /usr/bin/python3 -c 'import platform; print(platform.machine(), platform.python_version())')" ||
    cant "$suite's python3 does not start under qemu-aarch64-static"
echo "sysroot.sh: $suite root ready: $python" >&2
rm -rf "$dest/root"
mv "$root" "$dest/root"
echo "$want" >"$stamp"
