#!/usr/bin/env bash
# Download pinned Debian packages into an empty folder (shared by the corpus scripts).
#   bash examples/corpus/download_debs.sh DEBS_DIR NAME=VERSION ...
# One changed package file changes the corpus built from it, so the versions are pinned; LATEST=1
# takes the mirror's current versions instead (a different corpus). A non-empty DEBS_DIR is refused
# (nothing is overwritten); a version that left the mirror fails naming the packages.
set -euo pipefail
debs=$1
shift
packages="$*"
[ -n "${LATEST:-}" ] && packages=$(echo "$packages" | sed 's/=[^ ]*//g')
if [ -e "$debs" ] && [ -n "$(ls -A "$debs")" ]; then
  echo "error: $debs is not empty; choose another OUT_DIR or remove it yourself" >&2
  exit 2
fi
mkdir -p "$debs"
# shellcheck disable=SC2086
if ! (cd "$debs" && apt-get download $packages); then
  echo "error: apt-get download $packages failed: a pinned version may have left the mirror (apt-cache madison NAME" \
       "lists what it has; run apt-get update first). LATEST=1 builds from the current versions: another corpus than" \
       "the one the committed runs used" >&2
  exit 2
fi
