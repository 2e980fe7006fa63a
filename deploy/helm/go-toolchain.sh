# Sourced by install-helm.sh and install-kubecheck.sh: puts a Go that builds helm v3.16
# (go >= 1.22) on PATH. The machine's Go first (/usr/local/go, or one on PATH); else Go's
# own toolchain module (golang.org/toolchain, what `go` itself downloads for a newer
# go.mod), fetched from the Go module proxy into <repo>/.cache/go: Debian 12's golang is
# 1.19, too old for helm's go.mod.
GO_TOOLCHAIN=go1.22.12
# Go's checksum database's hashes of that toolchain module (the h1: dirhash `go` itself
# checks a downloaded toolchain against; read through the proxy's sumdb endpoint,
# /sumdb/sum.golang.org/lookup/golang.org/toolchain@v0.0.1-go1.22.12.linux-<arch>)
declare -A GO_TOOLCHAIN_H1=(
    [amd64]="h1:Hdh4VJAlDWzMnhKpqDwqJJr+sE7NgsJ86dyR4wrv2oY="
    [arm64]="h1:d5pIIWRmHJcXHnW+PRQ5RyowiqOcFC/80DB4FGToaPU="
)

_go_is_new_enough() {
    # go1.22.12, go1.26.8, go1.23rc2, devel ...: the minor number's leading digits
    local v minor
    v="$(go env GOVERSION 2>/dev/null)" || return 1
    [[ "${v}" =~ ^go([0-9]+)\.([0-9]+) ]] || return 1
    minor="${BASH_REMATCH[2]}"
    (( BASH_REMATCH[1] > 1 || 10#${minor} >= 22 ))
}

_zip_h1() {
    # Go's h1: hash of a module zip (dirhash.HashZip): sha256 over sorted
    # "<sha256 hex>  <name>" lines of its files, base64
    python3 - "$1" <<'PY'
import base64, hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    lines = "".join(f"{hashlib.sha256(z.read(n)).hexdigest()}  {n}\n"
                    for n in sorted(i.filename for i in z.infolist() if not i.is_dir()))
print("h1:" + base64.b64encode(hashlib.sha256(lines.encode()).digest()).decode())
PY
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
    if [[ "$(_zip_h1 "${zip}")" != "${GO_TOOLCHAIN_H1[${arch}]}" ]]; then
        rm -f "${zip}"
        echo "the Go toolchain from ${proxy%%,*} does not match Go's checksum database: not used" >&2
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
