// The addon's entry point: registration, CPU facts and the load-time self-check.
#include "addon.h"

#include <cmath>
#include <initializer_list>
#include <string>
#include <vector>

#include "compute_budget.h"
#include "cuda_loader.h"
#include "kernels.h"
#include "transformer.h"
#include "thread_pool.h"

namespace microgpt {

std::string supported_isas() {
  std::string out;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    if (!isa_supported(isa)) continue;
    if (!out.empty()) out += ", ";
    out += isa_name(isa);
  }
  return out;
}

Isa isa_argument(Napi::Env env, const std::string& name) {
  Isa isa;
  if (!isa_from_name(name.c_str(), &isa)) {
    throw Napi::Error::New(env, "unknown instruction set \"" + name + "\"; use one of scalar, avx2, avx512, neon");
  }
  if (!isa_supported(isa)) {
    throw Napi::Error::New(env, "instruction set \"" + name + "\" is not supported by this CPU or build; supported: " +
                                    supported_isas());
  }
  return isa;
}

namespace {

// { best, supported[] }: what the CPU probe found.
Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("best", isa_name(isa_best()));
  Napi::Array list = Napi::Array::New(env);
  uint32_t n = 0;
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512, Isa::neon}) {
    if (isa_supported(isa)) list.Set(n++, isa_name(isa));
  }
  out.Set("supported", list);
  return out;
}

// A small matmul + GELU through every supported instruction set against the reference: null if
// they agree, else what went wrong. Catches a miscompiled or mis-dispatched kernel at load.
Napi::Value self_check(const Napi::CallbackInfo& info) {
  const int T = 3, K = 37, N = 45;
  std::vector<float> x(T * K), W(N * K), b(N), packed(packed_size(N, K));
  for (int i = 0; i < T * K; i++) x[i] = std::sin(0.37f * i);
  for (int i = 0; i < N * K; i++) W[i] = std::cos(0.11f * i) * 0.2f;
  for (int i = 0; i < N; i++) b[i] = 0.01f * i;
  pack_linear(packed.data(), W.data(), N, K);
  std::vector<float> want(T * N), got(T * N);
  kernels_ref().matmul(want.data(), x.data(), packed.data(), b.data(), T, K, N, 0, panel_count(N), Epilogue::gelu);
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon}) {
    if (!isa_supported(isa)) continue;
    kernels_for(isa).matmul(got.data(), x.data(), packed.data(), b.data(), T, K, N, 0, panel_count(N), Epilogue::gelu);
    for (int i = 0; i < T * N; i++) {
      if (!(std::fabs(got[i] - want[i]) <= 1e-4f * (1.0f + std::fabs(want[i])))) {
        return Napi::String::New(info.Env(), std::string("the ") + isa_name(isa) +
                                                  " kernels disagree with the scalar reference (output " +
                                                  std::to_string(i) + ": " + std::to_string(got[i]) + " vs " +
                                                  std::to_string(want[i]) + ")");
      }
    }
  }
  return info.Env().Null();
}

// The external memory V8 has been told of through napi_adjust_external_memory (by every addon
// of this isolate), in bytes: what the models report (Handle::report_memory), for the tests.
// process.memoryUsage().external does not show it: that counts ArrayBuffers.
Napi::Value external_memory(const Napi::CallbackInfo& info) {
  int64_t total = 0;
  napi_status status = napi_adjust_external_memory(info.Env(), 0, &total);
  if (status != napi_ok) throw Napi::Error::New(info.Env(), "napi_adjust_external_memory failed");
  return Napi::Number::New(info.Env(), static_cast<double>(total));
}

// ConfigLimits under lib/config.ts's names, so that a test can check the two agree.
Napi::Object config_limits(Napi::Env env) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("vocabSize", Napi::Number::New(env, static_cast<double>(ConfigLimits::vocab_size)));
  o.Set("blockSize", Napi::Number::New(env, static_cast<double>(ConfigLimits::block_size)));
  o.Set("nLayer", Napi::Number::New(env, static_cast<double>(ConfigLimits::n_layer)));
  o.Set("nHead", Napi::Number::New(env, static_cast<double>(ConfigLimits::n_head)));
  o.Set("nEmbd", Napi::Number::New(env, static_cast<double>(ConfigLimits::n_embd)));
  o.Set("headSize", Napi::Number::New(env, static_cast<double>(ConfigLimits::head_size)));
  o.Set("parameters", Napi::Number::New(env, static_cast<double>(ConfigLimits::parameters)));
  o.Set("layerPositionWidth", Napi::Number::New(env, static_cast<double>(ConfigLimits::layer_position_width)));
  o.Set("attentionScores", Napi::Number::New(env, static_cast<double>(ConfigLimits::attention_scores)));
  o.Freeze();
  return o;
}

// computeBudget(): the process's compute budget now (compute_budget.h), shared by the models of
// every environment (worker threads included).
Napi::Value compute_budget(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ComputeBudget::Snapshot s = ComputeBudget::process().snapshot();
  Napi::Object o = Napi::Object::New(env);
  o.Set("capacity", Napi::Number::New(env, s.capacity));
  o.Set("inUse", Napi::Number::New(env, s.in_use));
  o.Set("peak", Napi::Number::New(env, s.peak));
  o.Set("models", Napi::Number::New(env, s.members));
  return o;
}

// cuda(): whether the CUDA module loaded and which devices it sees (cuda_loader.h); probed once
// per process, on the first call.
Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CudaStatus& s = cuda_status();
  Napi::Object o = Napi::Object::New(env);
  o.Set("module", s.module.empty() ? env.Null() : Napi::String::New(env, s.module));
  o.Set("reason", s.reason.empty() ? env.Null() : Napi::String::New(env, s.reason));
  Napi::Array devices = Napi::Array::New(env, s.devices.size());
  for (size_t i = 0; i < s.devices.size(); i++) {
    const CudaDevice& d = s.devices[i];
    Napi::Object o2 = Napi::Object::New(env);
    o2.Set("index", Napi::Number::New(env, static_cast<double>(i)));
    o2.Set("name", Napi::String::New(env, d.name));
    o2.Set("memoryBytes", Napi::Number::New(env, d.memory_bytes));
    o2.Set("computeCapability", Napi::String::New(env, std::to_string(d.major) + "." + std::to_string(d.minor)));
    o2.Set("multiprocessors", Napi::Number::New(env, d.multiprocessors));
    o2.Set("usable", Napi::Boolean::New(env, d.usable));
    devices.Set(static_cast<uint32_t>(i), o2);
  }
  o.Set("devices", devices);
  return o;
}

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    // Hooks run newest first, so this one runs before Node-API finalizes our objects.
    auto* flag = new std::shared_ptr<bool>(data_.tearing_down);
    napi_status status = napi_add_env_cleanup_hook(
        env,
        [](void* arg) {
          auto* flag = static_cast<std::shared_ptr<bool>*>(arg);
          **flag = true;
          delete flag;
        },
        flag);
    if (status != napi_ok) {
      delete flag;
      throw Napi::Error::New(env, "microgpt: could not register the environment's cleanup hook");
    }
    register_model_classes(env, exports, &data_);
    exports.Set("cpu", Napi::Function::New(env, cpu_info, "cpu"));
    exports.Set("selfCheck", Napi::Function::New(env, self_check, "selfCheck"));
    exports.Set("externalMemory", Napi::Function::New(env, external_memory, "externalMemory"));
    exports.Set("testing", make_testing(env));
    exports.Set("napiVersion", Napi::Number::New(env, NAPI_VERSION));
    exports.Set("configLimits", config_limits(env));
    exports.Set("maxThreads", Napi::Number::New(env, ThreadPool::kMaxThreads));
    exports.Set("computeBudget", Napi::Function::New(env, compute_budget, "computeBudget"));
    exports.Set("cuda", Napi::Function::New(env, cuda_info, "cuda"));
  }
  AddonData data_;
};

}  // namespace

AddonData* addon_data(Napi::Env env) { return &env.GetInstanceData<Addon>()->data_; }

}  // namespace microgpt

using microgpt::Addon;
NODE_API_ADDON(Addon)
