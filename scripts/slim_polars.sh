#!/usr/bin/env bash
# Repack the polars wheels for the GPU machine so that they fit its 64 MiB working-tree limit:
#   scripts/slim_polars.sh [WHEEL_DIR] [OUT_DIR]      (defaults .gpu/whl and .gpu/slim, both git-ignored)
# The runtime wheel's shared library (~178 MB, 54 MB as a wheel) is stored xz-compressed (~31 MB) as OUT_DIR/rt.xz,
# its path inside the wheel in OUT_DIR/rt.path, the rest of that wheel as OUT_DIR/rest.tar; the small polars wheel
# is copied. scripts/gpu_same_call.sh unpacks OUT_DIR into /tmp/site (carry it instead of .gpu/whl).
set -eu
src=${1:-.gpu/whl}
out=${2:-.gpu/slim}
rt=$(ls "$src"/polars_runtime*.whl 2>/dev/null | head -1)
if [[ -z $rt ]]; then
  echo "scripts/slim_polars.sh: $src: no polars_runtime*.whl" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m zipfile -e "$rt" "$tmp/site"
so=$(cd "$tmp/site" && ls _polars_runtime*/*.so)
mkdir -p "$out"
xz -9 -T0 -c "$tmp/site/$so" > "$out/rt.xz"
echo "$so" > "$out/rt.path"
rm "$tmp/site/$so"
tar cf "$out/rest.tar" -C "$tmp/site" .
cp "$src"/polars-[0-9]*.whl "$out/"
du -b "$out"/*
