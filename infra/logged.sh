#!/usr/bin/env bash
# infra/logged.sh LOG TITLE COMMAND [ARG...]
#
# Runs COMMAND with its output appended to LOG and prints one line, TITLE, instead: for the steps
# of `make` whose output is pages of noise when all goes well (pip's install). When COMMAND
# fails, the last 40 lines of LOG are printed and its exit status is returned: errors stay loud.
# VERBOSE=1 (make VERBOSE=1 ...) shows the output on the terminal as well.
set -uo pipefail

log=$1 title=$2
shift 2
mkdir -p "$(dirname "$log")"
echo "==> $title (log: $log)"
printf '\n$ %s\n' "$*" >>"$log"
if [[ -n ${VERBOSE:-} ]]; then
    "$@" 2>&1 | tee -a "$log"
    status=${PIPESTATUS[0]}
else
    "$@" >>"$log" 2>&1
    status=$?
fi
if ((status != 0)); then
    echo "--- last lines of $log ---" >&2
    tail -n 40 "$log" >&2
    echo "error: '$title' failed (exit $status); the whole output is in $log" >&2
fi
exit "$status"
