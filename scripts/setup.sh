#!/usr/bin/env bash
# Machine setup shared by CI and developers: checks the toolchain Troupe needs and
# installs the pinned nats-server into .troupe/tools/bin (used by @troupe/testkit).
set -euo pipefail
need_major=20
have=$(node -p 'process.versions.node.split(".")[0]')
if [ "$have" -lt "$need_major" ]; then
  echo "setup: Node >= $need_major is required, found $(node --version)" >&2
  exit 1
fi

root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=versions.env
. "$root/scripts/versions.env"
tools_bin="$root/.troupe/tools/bin"
nats_bin="$tools_bin/nats-server"
want="v$NATS_SERVER_VERSION"

# Prints the version nats-server reports ("v2.15.2"), or nothing.
nats_version() { "$1" --version 2>/dev/null | sed -n 's/^nats-server: *//p' | head -n1; }

if [ -x "$nats_bin" ] && [ "$(nats_version "$nats_bin")" = "$want" ]; then
  echo "setup: nats-server $want already installed at $nats_bin"
  exit 0
fi

mkdir -p "$tools_bin"
if command -v go >/dev/null 2>&1; then
  rm -f "$nats_bin" # may be a symlink to an older distribution binary
  log="$(mktemp)"
  if ! GOBIN="$tools_bin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
    go install "github.com/nats-io/nats-server/v2@$want" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: go install of nats-server $want failed" >&2
    exit 1
  fi
  rm -f "$log"
  echo "setup: installed nats-server $(nats_version "$nats_bin") at $nats_bin (go install)"
  exit 0
fi

# No Go toolchain: fall back to the distribution package, whatever version it has.
if ! command -v nats-server >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: neither go nor apt-get is available; install nats-server $want and put it at $nats_bin" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if ! $sudo apt-get install -y -qq nats-server >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null
    $sudo apt-get install -y -qq nats-server >/dev/null
  fi
fi
system_bin="$(command -v nats-server)"
ln -sf "$system_bin" "$nats_bin"
found="$(nats_version "$nats_bin")"
if [ "$found" = "$want" ]; then
  echo "setup: using nats-server $found from $system_bin (linked into $tools_bin)"
else
  echo "setup: WARNING: go is not installed; using nats-server ${found:-of unknown version} from $system_bin instead of the pinned $want (linked into $tools_bin). JetStream features newer than ${found:-that} will be missing." >&2
fi
