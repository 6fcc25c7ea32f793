// The Node-API binding: the per-environment state and the pieces each binding file registers.
// lib/backends/native/binding.ts is the TypeScript description of what JavaScript sees.
#pragma once

// Environment teardown (a worker's terminate() or process.exit()) can catch a callback of ours
// between two Node-API calls: every call after that fails. node-addon-api turns the failure into
// a C++ exception and, at the callback's edge, throws it into JavaScript, which fails as well;
// without this macro it then throws again, out of a C callback (std::terminate), or aborts in
// Napi::Error's constructor. With it, an error the environment can no longer take is dropped.
// NODE_ADDON_API_CPP_EXCEPTIONS_ALL: a std::exception (std::bad_alloc) leaving a callback becomes
// a JavaScript error instead of std::terminate.
// node-addon-api is header-only, so every file must see the same settings: all of ours include
// napi.h through this header, and nothing else may include it first.
#ifndef NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS
#define NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS
#endif
#ifndef NODE_ADDON_API_CPP_EXCEPTIONS_ALL
#define NODE_ADDON_API_CPP_EXCEPTIONS_ALL
#endif
#include <napi.h>

#include <memory>
#include <string>

#include "cpu.h"

namespace microgpt {

// Per-environment state (napi instance data): the addon loads in worker threads too, so nothing
// lives in statics.
struct AddonData {
  Napi::FunctionReference model_class;
  Napi::FunctionReference session_class;
  // Set by the environment's cleanup hook, which runs before any of our objects is finalized
  // there: the environment is going away, so finalizers neither settle promises nor report
  // memory to V8. Shared with the objects that need it, which may outlive this struct.
  std::shared_ptr<bool> tearing_down = std::make_shared<bool>(false);
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
