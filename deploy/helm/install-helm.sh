#!/usr/bin/env bash
# Build helm from the Go module proxy into <repo>/.cache/bin/helm (no binary download).
#
# Idempotent: does nothing when .cache/bin/helm already reports HELM_VERSION.
# Needs Go (any release that builds HELM_VERSION) and access to the Go module proxy.
# Environment:
#   HELM_VERSION  helm release to build (default below)
#   GOPROXY       module proxy (Go's default when unset)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.4}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${REPO_ROOT}/.cache/bin"
HELM="${BIN_DIR}/helm"

installed_version() {
    # `helm version --template` prints e.g. "v3.16.4"; empty when helm is absent or broken.
    [[ -x "${HELM}" ]] || return 0
    "${HELM}" version --template '{{.Version}}' 2>/dev/null || true
}

if [[ "$(installed_version)" == "${HELM_VERSION}" ]]; then
    echo "helm ${HELM_VERSION} already at ${HELM}"
    exit 0
fi

# The machine's Go lives in /usr/local/go (Debian 12's golang, 1.19, is too old for helm
# v3.16; a non-login shell such as CI's may not have it on PATH); without one, Go's own
# toolchain module from the module proxy (go-toolchain.sh)
source "$(dirname "${BASH_SOURCE[0]}")/go-toolchain.sh"
ensure_go || { echo "install-helm: a Go >= 1.22 is required" >&2; exit 1; }

mkdir -p "${BIN_DIR}"
# Outside any Go module: the go commands below must not read or touch a go.mod.
cd "${BIN_DIR}"
echo "building helm ${HELM_VERSION} with $(go version) (first build takes a few minutes)"

# Stamp what helm's own Makefile stamps: its version (`go install` leaves "v3.x"), and the
# Kubernetes version that `helm template`/`helm lint` assume without a cluster (left
# unstamped, helm pretends to talk to Kubernetes 1.20 and refuses charts needing newer).
# That Kubernetes version follows the k8s.io/client-go module helm is built with.
gomod="$(GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/v3@${HELM_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
client_go="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "${gomod}" | head -n1)"
if [[ -z "${client_go}" ]]; then
    echo "install-helm: cannot find k8s.io/client-go in ${gomod}" >&2
    exit 1
fi
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${client_go}"
done

# -mod=mod: resolve helm's module graph from the proxy, never from a vendor directory.
GOFLAGS="-mod=mod" GOBIN="${BIN_DIR}" CGO_ENABLED=0 \
    go install -ldflags "${ldflags}" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

got="$(installed_version)"
if [[ "${got}" != "${HELM_VERSION}" ]]; then
    echo "install-helm: built helm reports '${got}', expected ${HELM_VERSION}" >&2
    exit 1
fi
echo "helm ${HELM_VERSION} installed at ${HELM}"
