// Big buffers straight from the OS: the weights, the scratch of a pass and the KV caches.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace microgpt {

// Memory for an AlignedBuffer: `bytes` aligned to `align` (64, or 2 MB for huge pages). Buffers
// of 64 KB or more come straight from the OS (mmap, or VirtualAlloc on Windows) and go straight
// back to it when freed. Through malloc, freed weights and caches stayed in its heaps: a test that
// loads and disposes 50 small models with sessions kept ~50 MB more resident than before, where a
// user disposing a model expects the memory gone.
void* allocate_buffer(size_t bytes, size_t align);
void free_buffer(void* p, size_t bytes, size_t align);

// Asks the OS to back [p, p + bytes) with huge pages where it can (Linux: madvise; elsewhere a
// no-op). p is 2 MB aligned.
void advise_huge_pages(void* p, size_t bytes);

// 64-byte aligned storage, uninitialised: every user writes before it reads (the KV cache up to
// its length, scratch per pass), so no page is touched before it is needed.
// With `huge` (the weights), a buffer of 4 MB or more is 2 MB aligned and asked for huge pages: a
// decode step streams every weight once, and with 4 KB pages it also walks a page table entry
// per 4 KB, which huge pages save (docs/native-measurements.md).
// Not for KV caches: a short sequence touches the start of each layer's cache only, and a huge
// page would commit 2 MB for each such touch.
template <typename T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t n, bool huge = false)
      : data_(nullptr, Free{n * sizeof(T), alignment(n * sizeof(T), huge)}), size_(n) {
    if (n == 0) return;
    const size_t bytes = n * sizeof(T);
    data_.reset(static_cast<T*>(allocate_buffer(bytes, alignment(bytes, huge))));
    if (alignment(bytes, huge) == kHugePage) advise_huge_pages(data_.get(), bytes);
  }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  size_t size() const { return size_; }

 private:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static size_t alignment(size_t bytes, bool huge) { return huge && bytes >= 2 * kHugePage ? kHugePage : 64; }
  struct Free {
    size_t bytes = 0;
    size_t align = 64;
    void operator()(T* p) const { free_buffer(p, bytes, align); }
  };
  std::unique_ptr<T[], Free> data_{nullptr, Free{}};
  size_t size_ = 0;
};
using FloatBuffer = AlignedBuffer<float>;
using HalfBuffer = AlignedBuffer<uint16_t>;  // IEEE float16 bits

}  // namespace microgpt
