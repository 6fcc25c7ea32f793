// The scalar machine probes, and the table for each instruction set.
#include <cmath>

#include "probes.h"

namespace microgpt {

namespace {

constexpr int kRefFmaChains = 8;

float fma_loop_ref(long iters) {
  float acc[kRefFmaChains];
  for (int c = 0; c < kRefFmaChains; c++) acc[c] = 0.001f * static_cast<float>(c);
  for (long i = 0; i < iters; i++) {
    for (int c = 0; c < kRefFmaChains; c++) acc[c] = std::fma(acc[c], 0.999999f, 1e-7f);
  }
  float sum = 0.0f;
  for (int c = 0; c < kRefFmaChains; c++) sum += acc[c];
  return sum;
}

float read_sum_ref(const float* x, size_t n) {
  float sum = 0.0f;
  for (size_t i = 0; i < n; i++) sum += x[i];
  return sum;
}

}  // namespace

const Probes& probes_ref() {
  static const Probes p = {Isa::scalar, fma_loop_ref, kRefFmaChains * 2, read_sum_ref};
  return p;
}

const Probes& probes_for(Isa isa) {
  switch (isa) {
#if defined(MICROGPT_HAVE_X86)
    case Isa::avx2: return probes_avx2();
    case Isa::avx512: return probes_avx512();
#endif
#if defined(MICROGPT_HAVE_NEON)
    case Isa::neon: return probes_neon();
#endif
    default: return probes_ref();
  }
}

}  // namespace microgpt
