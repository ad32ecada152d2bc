#!/usr/bin/env bash
# Installs everything vmflow needs on one Debian 12 machine, from nothing, idempotently:
# Debian packages, the Temporal dev server (built once from its Go module, cached under
# ~/.cache/vmflow), the Python environment (.venv in the checkout) and the lab guest image.
# A warm machine finishes in a few seconds.
set -euo pipefail

repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_dir=${VMFLOW_CACHE_DIR:-$HOME/.cache/vmflow}
temporal_version=v1.5.1   # later tags carry a go.mod replace line that breaks `go install pkg@version`
packages=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils libvirt-dev pkg-config
          gdb  # a test session shows what a lab libvirtd that stops answering was doing
          busybox-static cpio xz-utils tini iproute2 nats-server socat dnsmasq-base nftables genisoimage
          chromium chromium-driver  # chromium: the portal's tests run in a real browser
          postgresql  # server binaries for `vmflow up --database postgres` and the unit tests; its own
                      # cluster in the run dir (deploy/postgres.py), never Debian's `main` one
          docker-compose)  # `docker-compose config -q` checks docker-compose.yml; it needs no daemon
# The portal's front-end assets come from the npm registry: Debian's npm only when none is there
# (a Node.js from elsewhere brings its own and conflicts with Debian's).
command -v npm >/dev/null || packages+=(nodejs npm)

log() { echo "install: $*" >&2; }

install_packages() {
    local missing=() pkg
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian's Go is too old for the Temporal CLI (it needs >= 1.25); use the newest go on PATH or
# in /usr/local/go.
find_go() {
    local candidate
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
        [[ -x $candidate ]] || continue
        local minor
        minor=$("$candidate" env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
        if [[ -n $minor && $minor -ge 25 ]]; then echo "$candidate"; return; fi
    done
}

install_temporal() {
    if [[ -n ${VMFLOW_TEMPORAL_BIN:-} && -x ${VMFLOW_TEMPORAL_BIN} ]] || command -v temporal >/dev/null \
        || [[ -x $cache_dir/bin/temporal ]]; then
        return
    fi
    local go
    go=$(find_go)
    [[ -n $go ]] || { log "error: building the Temporal server needs Go >= 1.25"; exit 1; }
    log "building the Temporal dev server $temporal_version from its Go module (once per machine)"
    mkdir -p "$cache_dir/bin"
    GOBIN="$cache_dir/bin" GOFLAGS=-mod=mod "$go" install "github.com/temporalio/cli/cmd/temporal@$temporal_version"
}

install_python() {
    local venv=$repo_dir/.venv stamp extras=test,postgres  # postgres: psycopg, the PostgreSQL driver
    stamp=$({ sha256sum "$repo_dir/pyproject.toml"; echo "$extras"; } | sha256sum | cut -c1-16)
    if [[ -x $venv/bin/python && -f $venv/.installed && $(cat "$venv/.installed") == "$stamp" ]]; then
        return
    fi
    log "creating the Python environment in $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e "$repo_dir[$extras]"
    echo "$stamp" >"$venv/.installed"
}

# The browser libraries (htmx, xterm.js, Swagger UI), pinned by package-lock.json and served by the
# API itself: browsers never fetch them from anywhere else.
install_portal_assets() {
    local dir=$repo_dir/services/portal stamp
    stamp=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
    if [[ -f $dir/node_modules/.installed && $(cat "$dir/node_modules/.installed") == "$stamp" ]]; then
        return
    fi
    log "installing the portal's front-end libraries from the npm registry"
    (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    echo "$stamp" >"$dir/node_modules/.installed"
}

install_packages
install_temporal
install_python
install_portal_assets
bash "$repo_dir/deploy/guest/build-image.sh" "$cache_dir/images/lab-guest" >&2
log "ready"
