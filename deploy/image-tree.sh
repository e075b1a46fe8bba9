#!/bin/sh
# Used by the Dockerfiles' build stage: copies what the runtime stage needs into $1 — the
# root and workspace manifests, the lock file, and each workspace's compiled dist/.
set -eu
out="$1"
rm -rf "$out"
mkdir -p "$out"
cp package.json package-lock.json "$out/"
for dir in packages/* apps/* examples/* bench; do
  [ -f "$dir/package.json" ] || continue
  mkdir -p "$out/$dir"
  cp "$dir/package.json" "$out/$dir/"
  if [ -d "$dir/dist" ]; then cp -R "$dir/dist" "$out/$dir/"; fi
done
