# CMake toolchain file: linux-arm64 (aarch64, glibc) from an x86-64 Debian/Ubuntu host with the
# distribution's cross compiler (apt-get install g++-aarch64-linux-gnu). Used by
# scripts/build-cross.mjs (npm run build:prebuild:linux-arm64) for prebuilds/linux-arm64/.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(MICROGPT_CROSS_PREFIX aarch64-linux-gnu- CACHE STRING "Prefix of the cross tools (aarch64-linux-gnu-g++, -strip, ...)")
set(CMAKE_C_COMPILER ${MICROGPT_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${MICROGPT_CROSS_PREFIX}g++)

# Libraries and headers of the target only; programs (node, for node-addon-api's path) of the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
