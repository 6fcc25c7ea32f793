#!/usr/bin/env bash
# What the browser test (test/playground.test.ts) needs beyond npm: Debian's chromium, driven by
# puppeteer-core. Installs it when it is missing and we are root; otherwise says what to do, and
# the test skips with one line naming the missing browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  echo "install-test-deps: installed $(chromium --version 2>/dev/null || echo chromium)"
else
  echo "install-test-deps: chromium is missing; install it (Debian: apt-get install -y chromium) or the playground browser test skips"
fi
