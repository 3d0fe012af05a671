#!/usr/bin/env bash
# Installs Debian's PostgreSQL server binaries (initdb, pg_ctl), which `make mlflow-server` and
# the tracking-server tests use to run a cluster of their own in a state dir (infra/postgres.py).
# Idempotent: does nothing when initdb is already there (on PATH or in /usr/lib/postgresql/*/bin)
# and, for root, the unprivileged user `postgres` that the server runs as exists.
# The project never uses the cluster `main` that Debian's package may create and start as a
# system service (port 5432); it starts and stops its own with pg_ctl.
# Exits non-zero, saying why, when apt fails.
set -euo pipefail

PACKAGES=(postgresql)
SERVER_USER=postgres # infra/postgres.py: SERVER_USER_WHEN_ROOT

say() { echo "install_postgres: $*"; }
fail() {
    echo "install_postgres: ERROR: $*" >&2
    exit 1
}

find_initdb() {
    command -v initdb 2>/dev/null && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1
}

ready() {
    [[ -n $(find_initdb) ]] || return 1
    [[ $(id -u) -ne 0 ]] || id -u "$SERVER_USER" >/dev/null 2>&1
}

if ready; then
    say "already installed: $("$(find_initdb)" --version)"
    exit 0
fi

command -v apt-get >/dev/null || fail "apt-get not found (not Debian-based): install the \
PostgreSQL server (initdb, pg_ctl) and put initdb on PATH yourself"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null \
        || fail "not root and no password-less sudo: run 'sudo apt-get install -y ${PACKAGES[*]}'"
    SUDO=(sudo -n)
fi

# Wait for another apt/dpkg run instead of failing on its lock.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)

say "apt-get update"
"${APT[@]}" update || fail "apt-get update failed (exit $?): no package lists, so no PostgreSQL"
say "apt-get install -y ${PACKAGES[*]}"
"${APT[@]}" install -y "${PACKAGES[@]}" || fail "apt-get install ${PACKAGES[*]} failed (exit $?)"

ready || fail "apt-get succeeded but initdb or the user '$SERVER_USER' is still missing"
say "installed: $("$(find_initdb)" --version)"
