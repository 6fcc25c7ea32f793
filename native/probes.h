// Machine probes for the kernel lab (binding.testing, not the model): what an instruction set can
// do at most, so that kernels can be judged as a fraction of it.
#pragma once

#include <cstddef>

#include "cpu.h"

namespace microgpt {

struct Probes {
  Isa isa;
  // `iters` rounds of independent vector FMAs on registers only; returns a value that depends on
  // every round (so none is optimised away). FLOPs = iters * fma_flops_per_iter.
  float (*fma_loop)(long iters);
  int fma_flops_per_iter;
  // The sum of x (n), streamed with vector loads: the memory read bandwidth.
  float (*read_sum)(const float* x, size_t n);
};

const Probes& probes_ref();
#if defined(MICROGPT_HAVE_X86)
const Probes& probes_avx2();
const Probes& probes_avx512();
#endif
#if defined(MICROGPT_HAVE_NEON)
const Probes& probes_neon();
#endif

// The probes for `isa`, which must be supported (isa_supported).
const Probes& probes_for(Isa isa);

}  // namespace microgpt
