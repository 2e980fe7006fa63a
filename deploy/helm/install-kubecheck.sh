#!/usr/bin/env bash
# Build deploy/helm/kubecheck (strict decoding of rendered objects with the Kubernetes API's
# own types) into <repo>/.cache/bin/kubecheck, from the Go module proxy.
#
# Idempotent: does nothing when the binary is newer than its sources. Its modules
# (k8s.io/client-go, apimachinery: the versions helm is built with) are mostly already in the
# module cache after install-helm.sh.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SRC="${REPO_ROOT}/deploy/helm/kubecheck"
BIN="${REPO_ROOT}/.cache/bin/kubecheck"

if [[ -x "${BIN}" ]] && [[ -z "$(find "${SRC}" -newer "${BIN}" -type f)" ]]; then
    echo "kubecheck already at ${BIN}"
    exit 0
fi
source "$(dirname "${BASH_SOURCE[0]}")/go-toolchain.sh"
ensure_go || { echo "install-kubecheck: a Go >= 1.22 is required" >&2; exit 1; }
mkdir -p "$(dirname "${BIN}")"
cd "${SRC}"
# -mod=readonly: the committed go.mod/go.sum decide every module; nothing is re-resolved.
GOFLAGS="-mod=readonly" CGO_ENABLED=0 go build -ldflags "-s -w" -o "${BIN}" .
echo "kubecheck installed at ${BIN}"
