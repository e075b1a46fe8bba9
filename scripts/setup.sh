#!/usr/bin/env bash
# Machine setup shared by CI and developers: checks the toolchain Troupe needs and installs
# the pinned tools into .troupe/tools: nats-server (used by @troupe/testkit), helm and a
# Python venv with kubernetes-validate (used by the Helm chart tests). Each step is skipped
# when the pinned version is already there.
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
tools="$root/.troupe/tools"
tools_bin="$tools/bin"
mkdir -p "$tools_bin"

# go install [flags] <module>@<version> into .troupe/tools/bin, printing go's output only on failure.
go_install() {
  local log
  log="$(mktemp)"
  if ! GOBIN="$tools_bin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" go install "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "setup: go install $* failed" >&2
    return 1
  fi
  rm -f "$log"
}

# --- nats-server ---------------------------------------------------------------------------

# Prints the version nats-server reports ("v2.15.2"), or nothing.
nats_version() { "$1" --version 2>/dev/null | sed -n 's/^nats-server: *//p' | head -n1; }

install_nats_server() {
  local nats_bin="$tools_bin/nats-server" want="v$NATS_SERVER_VERSION"
  if [ -x "$nats_bin" ] && [ "$(nats_version "$nats_bin")" = "$want" ]; then
    echo "setup: nats-server $want already installed at $nats_bin"
    return 0
  fi
  if command -v go >/dev/null 2>&1; then
    rm -f "$nats_bin" # may be a symlink to an older distribution binary
    go_install "github.com/nats-io/nats-server/v2@$want"
    echo "setup: installed nats-server $(nats_version "$nats_bin") at $nats_bin (go install)"
    return 0
  fi
  # No Go toolchain: fall back to the distribution package, whatever version it has.
  if ! command -v nats-server >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: neither go nor apt-get is available; install nats-server $want and put it at $nats_bin" >&2
      exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! $sudo apt-get install -y -qq nats-server >/dev/null 2>&1; then
      $sudo apt-get update -qq >/dev/null
      $sudo apt-get install -y -qq nats-server >/dev/null
    fi
  fi
  local system_bin found
  system_bin="$(command -v nats-server)"
  ln -sf "$system_bin" "$nats_bin"
  found="$(nats_version "$nats_bin")"
  if [ "$found" = "$want" ]; then
    echo "setup: using nats-server $found from $system_bin (linked into $tools_bin)"
  else
    echo "setup: WARNING: go is not installed; using nats-server ${found:-of unknown version} from $system_bin instead of the pinned $want (linked into $tools_bin). JetStream features newer than ${found:-that} will be missing." >&2
  fi
}

# --- helm ----------------------------------------------------------------------------------

# Prints the version helm reports ("v3.22.0"), or nothing.
helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }

install_helm() {
  local helm_bin="$tools_bin/helm" want="v$HELM_VERSION"
  if [ -x "$helm_bin" ] && [ "$(helm_version "$helm_bin")" = "$want" ]; then
    echo "setup: helm $want already installed at $helm_bin"
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "setup: WARNING: go is not installed, so helm $want is not; the Helm chart tests will fail until $helm_bin exists" >&2
    return 0
  fi
  rm -f "$helm_bin"
  local t0=$SECONDS gomod k8s_minor
  # What helm's Makefile links in and a plain `go install` leaves at the defaults: its own
  # version, and the Kubernetes version `helm template` assumes (1.20 otherwise), taken from
  # the client-go it is built with (v0.N.x = Kubernetes 1.N).
  gomod="$(go mod download -json "helm.sh/helm/v3@$want" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  k8s_minor="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$want"
  if [ -n "$k8s_minor" ]; then
    for pkg in pkg/lint/rules pkg/chartutil; do
      ldflags="$ldflags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
    done
  fi
  go_install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$want"
  echo "setup: installed helm $(helm_version "$helm_bin") at $helm_bin (go install, $((SECONDS - t0)) s)"
}

# --- kubernetes-validate (Kubernetes JSON schemas, offline) ----------------------------------

install_kubernetes_validate() {
  local venv="$tools/venv" want="$KUBERNETES_VALIDATE_VERSION"
  local kv="$venv/bin/kubernetes-validate"
  if [ -x "$kv" ] && [ "$("$kv" --version 2>/dev/null)" = "$want" ]; then
    echo "setup: kubernetes-validate $want already installed in $venv"
    return 0
  fi
  local python=""
  for p in python3 python; do
    if command -v "$p" >/dev/null 2>&1; then python="$p"; break; fi
  done
  if [ -z "$python" ]; then
    echo "setup: WARNING: no python3, so kubernetes-validate is not installed; the Helm chart tests will fail" >&2
    return 0
  fi
  rm -rf "$venv"
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv support out of python3
    rm -rf "$venv"
    if command -v apt-get >/dev/null 2>&1; then
      local sudo=""
      if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
      $sudo apt-get update -qq >/dev/null || true
      $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    "$python" -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$want"
  echo "setup: installed kubernetes-validate $("$kv" --version) in $venv"
}

install_nats_server
install_helm
install_kubernetes_validate
