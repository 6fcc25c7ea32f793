// Which instruction sets this CPU and OS can run, probed once; compiled without ISA flags.
#pragma once

namespace microgpt {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2, neon = 3 };

const char* isa_name(Isa isa);
// Parses "scalar", "avx2", "avx512", "neon"; false if the name is none of them.
bool isa_from_name(const char* name, Isa* out);
// Whether this binary has kernels for `isa` and this CPU (and OS) can run them.
bool isa_supported(Isa isa);
// The fastest supported instruction set.
Isa isa_best();

}  // namespace microgpt
