// The CPU probe. This file must be compiled without -mavx* flags: it runs on every CPU, and only
// after it says yes do we call into the kernels compiled for an instruction set.
#include "cpu.h"

#include <cstring>
#include <initializer_list>

#if defined(MICROGPT_HAVE_X86)
#if defined(_MSC_VER)
#include <immintrin.h>
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

namespace microgpt {

namespace {

struct CpuFeatures {
  bool avx2_fma = false;  // AVX2, FMA and F16C (float16 weights): every AVX2 CPU has all three
  bool avx512 = false;  // F, BW, DQ, VL: what kernels_avx512.cpp is compiled for
  bool neon = false;
};

#if defined(MICROGPT_HAVE_X86)
void cpuid(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
#if defined(_MSC_VER)
  int r[4];
  __cpuidex(r, static_cast<int>(leaf), static_cast<int>(subleaf));
  for (int i = 0; i < 4; i++) regs[i] = static_cast<unsigned>(r[i]);
#else
  __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
#endif
}

// XCR0: which register states the OS saves on a context switch. Without OS support the
// instructions fault even when cpuid lists them.
unsigned long long xgetbv0() {
#if defined(_MSC_VER)
  return _xgetbv(0);
#else
  unsigned eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
#endif
}
#endif

CpuFeatures probe() {
  CpuFeatures f;
#if defined(MICROGPT_HAVE_X86)
  unsigned r[4];
  cpuid(0, 0, r);
  const unsigned max_leaf = r[0];
  if (max_leaf < 7) return f;
  cpuid(1, 0, r);
  const bool osxsave = (r[2] >> 27) & 1;
  const bool avx = (r[2] >> 28) & 1;
  const bool fma = (r[2] >> 12) & 1;
  const bool f16c = (r[2] >> 29) & 1;
  if (!osxsave || !avx) return f;
  const unsigned long long xcr0 = xgetbv0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;     // SSE and AVX state
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;   // plus opmask, ZMM_Hi256, Hi16_ZMM
  cpuid(7, 0, r);
  const bool avx2 = (r[1] >> 5) & 1;
  const bool avx512f = (r[1] >> 16) & 1;
  const bool avx512dq = (r[1] >> 17) & 1;
  const bool avx512bw = (r[1] >> 30) & 1;
  const bool avx512vl = (r[1] >> 31) & 1;
  f.avx2_fma = ymm_state && avx2 && fma && f16c;
  f.avx512 = f.avx2_fma && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
#elif defined(MICROGPT_HAVE_NEON)
  f.neon = true;  // part of the AArch64 baseline
#endif
  return f;
}

const CpuFeatures& features() {
  // A function-local constant, initialised once thread-safely: the CPU does not change.
  static const CpuFeatures f = probe();
  return f;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

bool isa_from_name(const char* name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    if (std::strcmp(name, isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2: return features().avx2_fma;
    case Isa::avx512: return features().avx512;
    case Isa::neon: return features().neon;
  }
  return false;
}

Isa isa_best() {
  if (isa_supported(Isa::avx512)) return Isa::avx512;
  if (isa_supported(Isa::avx2)) return Isa::avx2;
  if (isa_supported(Isa::neon)) return Isa::neon;
  return Isa::scalar;
}

}  // namespace microgpt
