// The Node-API binding: the per-environment state and the pieces each binding file registers.
// lib/backends/native/binding.ts is the TypeScript description of what JavaScript sees.
#pragma once

#include <napi.h>

#include <string>

#include "cpu.h"

namespace microgpt {

// Per-environment state (napi instance data): the addon loads in worker threads too, so nothing
// lives in statics.
struct AddonData {
  Napi::FunctionReference model_class;
  Napi::FunctionReference session_class;
};

// This environment's AddonData.
AddonData* addon_data(Napi::Env env);

// Registers Model and Session on `exports` and their constructors in `data`.
void register_model_classes(Napi::Env env, Napi::Object exports, AddonData* data);
// The `testing` object: each kernel of each instruction set, for the tests.
Napi::Object make_testing(Napi::Env env);

// `name` as an instruction set this CPU runs, or a JS error naming the supported ones.
Isa isa_argument(Napi::Env env, const std::string& name);
std::string supported_isas();

}  // namespace microgpt
