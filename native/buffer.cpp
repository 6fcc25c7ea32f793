// Buffers of 64 KB or more from the OS (mmap; VirtualAlloc on Windows), smaller ones from operator new.
#include "buffer.h"

#include <new>

// Under AddressSanitizer big buffers come from operator new too: an overrun past a mapping's end
// would otherwise go unseen.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MICROGPT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define MICROGPT_ASAN 1
#endif

#if defined(_WIN32) && !defined(MICROGPT_ASAN)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#define MICROGPT_HAVE_VIRTUAL_ALLOC 1
#elif (defined(__unix__) || defined(__APPLE__)) && !defined(MICROGPT_ASAN)
#include <sys/mman.h>
#include <unistd.h>
#define MICROGPT_HAVE_MMAP 1
#endif

namespace microgpt {


namespace {
constexpr size_t kMapBytes = size_t{64} << 10;

#if defined(MICROGPT_HAVE_MMAP)
size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
#elif defined(MICROGPT_HAVE_VIRTUAL_ALLOC)
// What VirtualAlloc aligns a reservation to (64 KB on every Windows so far).
size_t allocation_granularity() {
  static const size_t size = [] {
    SYSTEM_INFO info;
    GetSystemInfo(&info);
    return static_cast<size_t>(info.dwAllocationGranularity);
  }();
  return size;
}
#endif
}  // namespace

void* allocate_buffer(size_t bytes, size_t align) {
#if defined(MICROGPT_HAVE_MMAP)
  if (bytes >= kMapBytes) {
    // mmap gives page alignment; for more, map `align` extra and unmap what lies outside.
    const size_t page = page_size();
    const size_t extra = align > page ? align : 0;
    const size_t mapped = round_up(bytes, page) + extra;
    void* p = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t start = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = extra ? round_up(start, align) : start;
    const uintptr_t end = aligned + round_up(bytes, page);
    if (aligned > start) munmap(p, aligned - start);
    if (start + mapped > end) munmap(reinterpret_cast<void*>(end), start + mapped - end);
    return reinterpret_cast<void*>(aligned);
  }
#elif defined(MICROGPT_HAVE_VIRTUAL_ALLOC)
  if (bytes >= kMapBytes) {
    // A reservation starts at the allocation granularity; for more, reserve `align` extra and
    // commit only the aligned part (pages are zeroed on first touch, as with mmap). free_buffer
    // releases the whole reservation.
    if (align <= allocation_granularity()) {
      void* p = VirtualAlloc(nullptr, bytes, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
      if (p == nullptr) throw std::bad_alloc();
      return p;
    }
    if (bytes > SIZE_MAX - align) throw std::bad_alloc();
    void* base = VirtualAlloc(nullptr, bytes + align, MEM_RESERVE, PAGE_NOACCESS);
    if (base == nullptr) throw std::bad_alloc();
    const uintptr_t aligned = (reinterpret_cast<uintptr_t>(base) + align - 1) / align * align;
    void* p = VirtualAlloc(reinterpret_cast<void*>(aligned), bytes, MEM_COMMIT, PAGE_READWRITE);
    if (p == nullptr) {
      VirtualFree(base, 0, MEM_RELEASE);
      throw std::bad_alloc();
    }
    return p;
  }
#endif
  return ::operator new[](bytes, std::align_val_t(align));
}

void free_buffer(void* p, size_t bytes, size_t align) {
#if defined(MICROGPT_HAVE_MMAP)
  if (bytes >= kMapBytes) {
    munmap(p, round_up(bytes, page_size()));
    return;
  }
#elif defined(MICROGPT_HAVE_VIRTUAL_ALLOC)
  if (bytes >= kMapBytes) {
    // The reservation allocate_buffer made: p itself, or below p when it aligned inside one.
    MEMORY_BASIC_INFORMATION info;
    if (VirtualQuery(p, &info, sizeof info) != 0) VirtualFree(info.AllocationBase, 0, MEM_RELEASE);
    return;
  }
#endif
  ::operator delete[](p, std::align_val_t(align));
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without transparent huge pages nothing changes
#else
  // Windows has no advice of the kind: its large pages must be allocated as such (MEM_LARGE_PAGES),
  // which needs a privilege (SeLockMemoryPrivilege) that ordinary users lack.
  (void)p;
  (void)bytes;
#endif
}

}  // namespace microgpt
