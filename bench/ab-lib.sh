# bench/ab-lib.sh, sourced by the ab-*.sh scripts. `ab_mount A B` mounts the layers
# ../shared/bench/unionfs.sh leaves in $LAYERS (default /var/tmp/bench-unionfs/layers)
# twice, at $W/m0 with A and at $W/m1 with B, and waits until both are up. A and B: a
# strata-unionfs binary (or any program taking fuse-overlayfs's command line), or "kernel"
# for overlayfs. PID holds the servers' pids. `ab_umount` unmounts both, waits for the
# servers and removes $W.
L=${LAYERS:-/var/tmp/bench-unionfs/layers}
declare -a PID=("" "")

ab_mount() {
  W=$(mktemp -d /var/tmp/ab.XXXXXX)
  local i b opts
  for i in 0 1; do
    b=$([ "$i" = 0 ] && echo "$1" || echo "$2")
    mkdir -p "$W/$i/u" "$W/$i/w" "$W/m$i"
    opts="lowerdir=$L/l3:$L/l2:$L/l1,upperdir=$W/$i/u,workdir=$W/$i/w"
    if [ "$b" = kernel ]; then
      mount -t overlay overlay -o "$opts" "$W/m$i"
    else
      "$b" -f -o "$opts" "$W/m$i" &
      PID[$i]=$!
    fi
  done
  for i in 0 1; do
    for _ in $(seq 50); do mountpoint -q "$W/m$i" && break; sleep 0.1; done
  done
}

ab_umount() {
  umount "$W/m0" "$W/m1"
  wait
  rm -rf "$W"
}
