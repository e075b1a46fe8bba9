#!/usr/bin/env bash
# Machine setup shared by CI and developers: checks the toolchain Troupe needs.
# (Later: installs the pinned nats-server and helm into .troupe/tools.)
set -euo pipefail
need_major=20
have=$(node -p 'process.versions.node.split(".")[0]')
if [ "$have" -lt "$need_major" ]; then
  echo "setup: Node >= $need_major is required, found $(node --version)" >&2
  exit 1
fi
