#!/usr/bin/env bash
# Chromium for the labelling app's browser test (tests/test_labelling_server.py), from Debian's packages.
# Installs it only where it is missing and this shell may (root with apt-get); otherwise says what to do.
# The test runs whenever chromium is on PATH; without it, it is skipped (and fails when CI is set).
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the browser test ..." >&2
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) >/dev/null \
        || echo "warning: could not install chromium; the browser test will not run" >&2
else
    echo "note: no chromium here; the browser test is skipped (install it with: sudo apt-get install chromium)" >&2
fi
exit 0
