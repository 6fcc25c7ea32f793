// Buffers of 64 KB or more from the OS (mmap), smaller ones from operator new.
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

#if (defined(__unix__) || defined(__APPLE__)) && !defined(MICROGPT_ASAN)
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
#endif
  return ::operator new[](bytes, std::align_val_t(align));
}

void free_buffer(void* p, size_t bytes, size_t align) {
#if defined(MICROGPT_HAVE_MMAP)
  if (bytes >= kMapBytes) {
    munmap(p, round_up(bytes, page_size()));
    return;
  }
#endif
  ::operator delete[](p, std::align_val_t(align));
}

void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without transparent huge pages nothing changes
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace microgpt
