#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver, which tests/test_mlflow_ui.py drives headless.
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there.
# Why apt: browser tools' own downloads (playwright install, selenium-manager) are not reachable
# from the project's machines; Debian's packages are. Exits non-zero, saying why, when apt fails.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver
PACKAGES=(chromium chromium-driver)

say() { echo "install_chromium: $*"; }
fail() {
    echo "install_chromium: ERROR: $*" >&2
    exit 1
}

if [[ -x $CHROMIUM && -x $CHROMEDRIVER ]]; then
    say "already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"); $CHROMEDRIVER"
    exit 0
fi

command -v apt-get >/dev/null || fail "apt-get not found (not Debian-based): install Chromium \
and chromedriver at $CHROMIUM and $CHROMEDRIVER yourself"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null && sudo -n true 2>/dev/null \
        || fail "not root and no password-less sudo: run 'sudo apt-get install -y ${PACKAGES[*]}'"
    SUDO=(sudo -n)
fi

# Wait for another apt/dpkg run instead of failing on its lock.
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300)

missing=()
for binary in "$CHROMIUM" "$CHROMEDRIVER"; do [[ -x $binary ]] || missing+=("$binary"); done
say "missing: ${missing[*]}"
say "apt-get update"
"${APT[@]}" update || fail "apt-get update failed (exit $?): no package lists, so no Chromium"
say "apt-get install -y ${PACKAGES[*]}"
"${APT[@]}" install -y "${PACKAGES[@]}" || fail "apt-get install ${PACKAGES[*]} failed (exit $?)"

[[ -x $CHROMIUM && -x $CHROMEDRIVER ]] \
    || fail "apt-get succeeded but $CHROMIUM or $CHROMEDRIVER is still missing"
say "installed: $("$CHROMIUM" --version 2>/dev/null); $("$CHROMEDRIVER" --version)"
