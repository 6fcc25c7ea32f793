// The emulated CUDA module (microgpt_cuda_emulated.so): the CUDA module's own sources, compiled by
// the host compiler against the CPU emulator of the CUDA runtime (compat.h includes emulator.h
// when __CUDACC__ is not defined), so that the engine and api.h's interface are tested on machines
// without a GPU. The addon opens it like the real module when MICROGPT_CUDA_MODULE names it.
// One translation unit, as nvcc compiles module.cu with what it includes.
#include "compat.h"

#include "module.cu"
// engine.cu lands after this file; until then the module has only what module.cu defines.
#if __has_include("engine.cu")
#include "engine.cu"
#endif
