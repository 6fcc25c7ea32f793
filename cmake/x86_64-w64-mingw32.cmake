# CMake toolchain file: win32-x64 from an x86-64 Debian/Ubuntu host with the distribution's
# mingw-w64 cross compiler, posix thread model (apt-get install g++-mingw-w64-x86-64-posix: the
# win32 model of GCC 12 has no std::thread). Used by scripts/win32-x64.sh for prebuilds/win32-x64/,
# which links the addon against an import library of node.exe (CMAKE_JS_LIB) and runs the native
# tests under wine. Release binaries for Windows can equally come from MSVC through cmake-js.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(MICROGPT_CROSS_PREFIX x86_64-w64-mingw32- CACHE STRING "Prefix of the cross tools (x86_64-w64-mingw32-g++, -windres, ...)")
set(CMAKE_C_COMPILER ${MICROGPT_CROSS_PREFIX}gcc-posix)
set(CMAKE_CXX_COMPILER ${MICROGPT_CROSS_PREFIX}g++-posix)
set(CMAKE_RC_COMPILER ${MICROGPT_CROSS_PREFIX}windres)

# The addon must load on a Windows machine with nothing but node.exe: libgcc, libstdc++ and
# winpthreads (std::thread) are linked in, not taken from DLLs next to it.
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static -static-libgcc -static-libstdc++")

# Libraries and headers of the target only; programs (node, for node-addon-api's path) of the host.
set(CMAKE_FIND_ROOT_PATH /usr/x86_64-w64-mingw32)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
