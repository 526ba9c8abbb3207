#!/usr/bin/env bash
# Rehearse the Docker image's toolchain here (the image is Ubuntu 24.04; Debian 13 is the nearest
# this machine reaches: Boost 1.83, protobuf 3.21, gcc 14, Python 3.13), as a new user meets it:
# a minimal Debian 13 with only make and git, this checkout cloned by root under /root, then the
# README's test command (`make test`: all set-up, then the tests), then the CUDA compile check
# (`make check-cuda-build`) with this machine's nvcc bind-mounted.
#
# The Debian 13 system is bootstrapped once into the cache (ABE_CAFFE_HOME, default
# ~/.cache/abe-caffe, under debian13/) and never changed: each run works on a fresh copy of it (an
# overlay), inside its own mount namespace, so no mount outlives the run even when it is killed.
# The Debian mirror, apt's network settings and pip's configuration are this machine's own.
# Caches kept between runs (debian13/ in the cache): downloaded .debs, pip's cache, and the Caffe
# builds (keyed by Python version, like every build cache); the set-up steps still run each time.
#
# Usage: scripts/rehearse_debian13.sh (as root; CUDA_HOME: the toolkit to mount, default
#        /usr/local/cuda-13.0; without one the CUDA step is skipped with a line saying so)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=trixie
cache=${ABE_CAFFE_HOME:-$HOME/.cache/abe-caffe}/debian13
cuda_home=${CUDA_HOME:-/usr/local/cuda-13.0}

die() { echo "rehearse-debian13: $1" >&2; exit "${2:-1}"; }
log() { echo "rehearse-debian13: $* [$(date +%T)]" >&2; }

if [ "${ABE_REHEARSAL_NAMESPACE:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts)" 2
  command -v debootstrap >/dev/null || die "debootstrap is not installed; run: apt-get install -y debootstrap" 2
  command -v unshare >/dev/null || die "unshare (util-linux) is not installed" 2
  # Everything below runs in a private mount namespace: its mounts vanish with it.
  ABE_REHEARSAL_NAMESPACE=1 exec unshare --mount --propagation private "$0" "$@"
fi

mirror=$("$here/scripts/debian_mirror.sh" 2>&1) || die "$mirror"
mkdir -p "$cache"/{apt-archives/partial,pip,caffe}

# 1. The minimal Debian 13, bootstrapped once (make and git only, as the issue's new user has).
base=$cache/base
if [ ! -f "$base/.complete" ]; then
  rm -rf "$base"
  tmp=$(mktemp -d "$cache/.base-XXXXXX")
  log "bootstrapping Debian 13 ($suite) from $mirror into $base"
  http_proxy=$(apt-config shell p Acquire::http::Proxy | sed -n "s/^p='\(.*\)'$/\1/p") \
    debootstrap --variant=minbase --include=make,git "$suite" "$tmp/rootfs" "$mirror" \
      >"$tmp/debootstrap.log" 2>&1 \
    || { rm -rf "$tmp"; die "debootstrap of $suite from $mirror failed (network or mirror?)"; }
  touch "$tmp/.complete"
  mv "$tmp" "$base"
fi

# 2. A fresh copy: an overlay whose changes go to a folder removed at the end.
run=$(mktemp -d "$cache/.run-XXXXXX")
root=$run/root
cleanup() {
  status=$?
  if mountpoint -q "$root"; then umount -R "$root" || umount -R -l "$root"; fi
  rm -rf "$run"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$run"/{upper,work,root}
mount -t overlay overlay -o "lowerdir=$base/rootfs,upperdir=$run/upper,workdir=$run/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys"
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev"
bind() {  # bind SOURCE TARGET-IN-ROOT [ro]
  if [ -d "$1" ]; then mkdir -p "$root$2"; else mkdir -p "$(dirname "$root$2")"; touch "$root$2"; fi
  mount --bind "$1" "$root$2"
  [ "${3:-}" != ro ] || mount -o remount,bind,ro "$root$2"
}
bind "$cache/apt-archives" /var/cache/apt/archives
bind "$cache/pip" /root/.cache/pip
bind "$cache/caffe" /root/.cache/abe-caffe
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# This machine's local TLS trust anchors (a proxy's CA, say): the system's ca-certificates,
# once set-up installs it, adds them to the bundle as it does here.
if [ -d /usr/local/share/ca-certificates ]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi

# This machine's apt network settings (proxies, validity checks), and its Debian mirror.
apt-config dump Acquire::http Acquire::https Acquire::ftp Acquire::Check-Valid-Until \
  Acquire::Check-Date > "$root/etc/apt/apt.conf.d/90host-network"
printf 'deb %s %s main\n' "$mirror" "$suite" > "$root/etc/apt/sources.list"
# As Debian's Docker images do: no fsync per unpacked file (the copy is thrown away anyway).
echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
# pip's configuration files, and the local folders they name (find-links, file:// indexes: a
# PEP 503 index is mounted from the folder above its simple/ page), read-only at the same paths.
pip_files=()
for f in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" ${PIP_CONFIG_FILE:-}; do
  [ -e "$f" ] || continue
  target=${f/#$HOME//root}
  mkdir -p "$(dirname "$root$target")" && cp -a "$f" "$root$target"
  pip_files+=("$f")
done
{ [ "${#pip_files[@]}" -eq 0 ] || find "${pip_files[@]}" -type f -exec cat {} +; env | grep '^PIP_' || true; } \
  | grep -o -E '(file://)?/[^ "'\'']+' | sed 's|^file://||' | sort -u | while read -r path; do
    [ "$(basename "$path")" = simple ] && path=$(dirname "$path")
    case "$path" in /etc/*|/usr/*|/root/*) continue ;; esac
    [ -d "$path" ] && bind "$path" "$path" ro
  done || true

# The shared real annotation files, at ../shared from the clone as from this checkout.
[ ! -d "$here/../shared" ] || bind "$(cd "$here/../shared" && pwd)" /root/shared ro

# 3. The clone, by root under /root, from a bare copy of this checkout's HEAD.
git clone -q --bare --no-hardlinks "$here" "$root/tmp/checkout.git"
env_in=(env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
        CI=true DEBIAN_FRONTEND=noninteractive)
while IFS= read -r v; do env_in+=("$v"); done < <(env | grep -E '^(PIP_[A-Z_]+|https?_proxy|no_proxy|HTTPS?_PROXY|NO_PROXY)=' || true)
inside() { chroot "$root" "${env_in[@]}" bash -c "$1" </dev/null; }
inside "git clone -q /tmp/checkout.git /root/abe-caffe"
inside "! command -v gcc && ! command -v python3 && ! command -v cmake" >/dev/null \
  || die "the Debian 13 copy has more than make and git"
log "cloned $(git -C "$here" rev-parse --short HEAD) into /root/abe-caffe (nothing installed but make and git)"

# 4. The README's test command, as a new user runs it.
start=$(date +%s)
inside "cd /root/abe-caffe && make test" || die "make test failed on Debian 13 (above)"
log "make test passed on Debian 13 in $(( $(date +%s) - start )) s"

# 5. The CUDA compile check with this machine's nvcc, Debian 13's gcc as host compiler.
if [ ! -x "$cuda_home/bin/nvcc" ]; then
  log "SKIPPED the CUDA compile check: no nvcc under $cuda_home (set CUDA_HOME)"
  exit 0
fi
bind "$cuda_home" "$cuda_home" ro
inside "gcc --version | head -n1; $cuda_home/bin/nvcc --version | tail -n1"
start=$(date +%s)
inside "cd /root/abe-caffe && CUDA_HOME=$cuda_home make check-cuda-build" \
  || die "make check-cuda-build failed on Debian 13 (above)"
log "CUDA compile check passed on Debian 13 in $(( $(date +%s) - start )) s"
