#!/usr/bin/env bash
# busybox-rootfs.sh OUT.tar — a small, reproducible rootfs tarball made from Debian's
# busybox-static (no network needed). It is the base image of Buildfile.example and of
# the tests: `strata import OUT.tar busybox:latest`.
set -euo pipefail

out=${1:?usage: busybox-rootfs.sh OUT.tar}
busybox=${BUSYBOX:-/bin/busybox}
epoch=${SOURCE_DATE_EPOCH:-946684800}

if ! [ -x "$busybox" ] || ! "$busybox" --list-full >/dev/null 2>&1; then
  echo "busybox-rootfs.sh: no static busybox at $busybox (fix: apt-get install -y busybox-static)" >&2
  exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,root,var/tmp,run,home}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
chmod 0700 "$rootfs/root"
install -m 0755 "$busybox" "$rootfs/bin/busybox"

# One relative symlink per applet, where busybox itself would install it.
"$busybox" --list-full | sort -u | while read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  dir=$(dirname "$applet")
  mkdir -p "$rootfs/$dir"
  up=$(printf '%s' "$dir" | sed -E 's#[^/]+#..#g')
  ln -sfn "$up/bin/busybox" "$rootfs/$applet"
done

cat > "$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$rootfs/etc/group" <<'GROUP'
root:x:0:
daemon:x:1:
users:x:100:
nogroup:x:65534:
GROUP
echo "127.0.0.1 localhost" > "$rootfs/etc/hosts"
echo "strata" > "$rootfs/etc/hostname"

tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$out.tmp" .
mv "$out.tmp" "$out"
