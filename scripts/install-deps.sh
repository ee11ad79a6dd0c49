#!/usr/bin/env bash
# install-deps.sh — everything strata's build, tests and benchmarks need on a fresh
# Debian 12 machine, as root. Idempotent: quick when all is installed already.
set -euo pipefail

packages=(
  build-essential pkg-config       # crates that build C (zstd-sys)
  libseccomp-dev                   # the runtime's seccomp filter (libseccomp crate)
  fuse3 attr                       # /dev/fuse users, getfattr/setfattr for debugging
  busybox-static                   # the offline base image (scripts/busybox-rootfs.sh)
  zstd xz-utils bzip2 gzip tar     # archive formats ADD and import accept
  skopeo umoci oci-image-tool podman   # other tools must read our images (tests)
  docker-registry apache2-utils openssl # a real registry, htpasswd and a TLS cert for auth tests
  bsdutils                         # script(1): the -it tests drive a real terminal
  iproute2 procps psmisc time      # ip, ps; /usr/bin/time for benchmarks
  util-linux-extra                 # fincore(1): a test checks what a copy-up leaves cached
  git python3                      # git build contexts; the tests serve them (git daemon, http.server)
  fuse-overlayfs unionfs-fuse buildah crun runc hyperfine bubblewrap fio   # bench anchors
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's docker-registry package starts a service on :5000 where systemd runs; the
# tests start their own registries on free ports and do not need it.
command -v cargo >/dev/null || { echo "install-deps: cargo not found (install Rust with rustup)" >&2; exit 1; }
[ -c /dev/fuse ] || { echo "install-deps: /dev/fuse missing (fix: modprobe fuse)" >&2; exit 1; }
# FUSE over io_uring (Linux 6.14+) is off by default; strata's FUSE server uses it when
# it is on: each request is served on the CPU that sent it.
uring=/sys/module/fuse/parameters/enable_uring
if [ -w "$uring" ]; then
  echo Y > "$uring"
else
  # strata falls back to /dev/fuse reads; only the io_uring test will fail.
  echo "install-deps: warning: $uring missing: no FUSE over io_uring in this kernel (6.14+)" >&2
fi
echo "install-deps: ok"
