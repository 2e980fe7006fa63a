# Sourced by install-helm.sh and install-kubecheck.sh: puts a Go that builds helm v3.16
# (go >= 1.22) on PATH. The machine's Go first (/usr/local/go, or one on PATH); else Go's
# own toolchain module (golang.org/toolchain, what `go` itself downloads for a newer
# go.mod), fetched from the Go module proxy into <repo>/.cache/go: Debian 12's golang is
# 1.19, too old for helm's go.mod.
GO_TOOLCHAIN="${GO_TOOLCHAIN:-go1.22.12}"

_go_is_new_enough() {
    local v
    v="$(go env GOVERSION 2>/dev/null)" || return 1  # e.g. go1.22.12, go1.26.8
    v="${v#go}"
    [[ "${v%%.*}" -gt 1 ]] || [[ "$(echo "${v}" | cut -d. -f2)" -ge 22 ]]
}

ensure_go() {
    local root="${REPO_ROOT}/.cache/go" proxy="${GOPROXY:-https://proxy.golang.org}"
    [ -x /usr/local/go/bin/go ] && PATH="/usr/local/go/bin:${PATH}"
    [ -x "${root}/bin/go" ] && PATH="${root}/bin:${PATH}"
    if command -v go >/dev/null 2>&1 && _go_is_new_enough; then
        return 0
    fi
    local arch module zip
    case "$(uname -m)" in
        x86_64) arch=amd64 ;;
        aarch64) arch=arm64 ;;
        *) echo "no Go >= 1.22 here, and no Go toolchain for $(uname -m): install Go" >&2
           return 1 ;;
    esac
    module="v0.0.1-${GO_TOOLCHAIN}.linux-${arch}"
    zip="$(mktemp --suffix=.zip)"
    echo "no Go >= 1.22 here: fetching ${GO_TOOLCHAIN} (golang.org/toolchain) from ${proxy%%,*}"
    if ! curl -fsSL --retry 3 -o "${zip}" "${proxy%%,*}/golang.org/toolchain/@v/${module}.zip"; then
        rm -f "${zip}"
        echo "could not fetch the Go toolchain from ${proxy%%,*}: install Go >= 1.22" >&2
        return 1
    fi
    rm -rf "${root}" "${root}.tmp" && mkdir -p "${root}.tmp"
    # The module zip holds golang.org/toolchain@<version>/{bin,pkg,src,...}; zip modes are
    # not kept, so the executables are marked again (as `go` does for its downloads)
    python3 -m zipfile -e "${zip}" "${root}.tmp"
    rm -f "${zip}"
    mv "${root}.tmp/golang.org/toolchain@${module}" "${root}" && rm -rf "${root}.tmp"
    chmod +x "${root}"/bin/* "${root}"/pkg/tool/*/*
    PATH="${root}/bin:${PATH}"
    _go_is_new_enough
}
