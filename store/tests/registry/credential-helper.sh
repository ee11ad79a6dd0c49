#!/bin/sh
# A docker credential helper for tests (docker-credential-helpers protocol: get, store,
# erase), keeping one file per server URL in @DIR@ and logging each call to @DIR@/calls.
dir='@DIR@'
input=$(cat)
case "$1" in
  get|erase) url=$input ;;
  store) url=$(printf '%s' "$input" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p') ;;
  *) echo "unknown action $1"; exit 1 ;;
esac
echo "$1 $url" >> "$dir/calls"
file="$dir/$(printf '%s' "$url" | tr -c 'A-Za-z0-9.' '_')"
case "$1" in
  get)
    [ -f "$file" ] || { echo "credentials not found in native keychain"; exit 1; }
    cat "$file" ;;
  store) printf '%s' "$input" > "$file" ;;
  erase)
    [ -f "$file" ] || { echo "credentials not found in native keychain"; exit 1; }
    rm "$file" ;;
esac
