// The Model and Session classes JavaScript sees (AddonModel, AddonSession here and in
// binding.ts). The weights are copied on the main thread and packed on a Napi::AsyncWorker (or,
// for a model given a CUDA device, uploaded there: cuda_model.h); every forward pass runs on the
// model's Engine (addon_engine.h), a thread of its own, and settles a Promise: the event loop
// never waits for a kernel.
//
// Batching: each call queues a group of requests (Model.appendMany: one per session; a plain
// append or forward: one), and the engine runs everything queued by the time it is free through
// Transformer::run as shared passes, then settles each group in one callback. A group settled
// together comes back together, so sessions stepping in lockstep stay in one batch.
//
// Lifetime: an AddonModel's Handle owns a shared_ptr<Transformer>; each queued group holds
// another, so dispose() drops the model's reference at once and the memory goes when the last
// pending pass ends. Sessions hold the AddonModel's shared_ptr<Handle>, not the Transformer, so a
// disposed model is freed even while its sessions live (they then fail with "disposed"). The KV
// cache of a session is shared the same way with its requests; when the last of them drops it, it
// goes back to the model's pool of caches, or is freed if the model is gone (kv_cache.h).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "addon.h"
#include "addon_engine.h"
#include "cuda_loader.h"
#include "transformer.h"

namespace microgpt {

namespace {

// What a model's JS objects share; touched on the main thread only.
struct Handle {
  Config config;
  std::shared_ptr<Transformer> model;    // null until load() resolves, and after dispose()
  std::unique_ptr<Engine> engine;  // where its passes run; made with the model
  bool loading = false;
  bool disposed = false;

  napi_env env;
  std::shared_ptr<bool> tearing_down;  // the environment's (AddonData)
  int64_t reported_bytes = 0;          // what V8 was last told this model holds

  Handle(napi_env e, std::shared_ptr<bool> teardown) : env(e), tearing_down(std::move(teardown)) {}
  ~Handle() {
    model.reset();
    report_memory();
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  // Tells V8 how much native memory the model holds (Transformer::memory_bytes: weights, KV caches),
  // as the change since it was last told, so that its collector weighs the small JS objects
  // that keep all this alive. Not while the environment is torn down: nobody collects then.
  void report_memory() {
    if (*tearing_down) return;
    const int64_t now = model ? static_cast<int64_t>(model->memory_bytes()) : 0;
    if (now == reported_bytes) return;
    int64_t total;
    if (napi_adjust_external_memory(env, now - reported_bytes, &total) == napi_ok) reported_bytes = now;
  }
};

// An error with a `code` property, which lib/backends/native/index.ts turns into a MicroGPTError.
template <typename E>
E coded(E e, const char* code) {
  e.Set("code", Napi::String::New(e.Env(), code));
  return e;
}

Napi::Error disposed_error(Napi::Env env, const char* what) {
  return coded(Napi::Error::New(env, std::string("the ") + what + " has been disposed"), "ERR_DISPOSED");
}

Napi::Error busy_error(Napi::Env env) {
  return Napi::Error::New(env, "a prefill on this session is still running: await it before the next call");
}

// A session's busy flag, set for as long as the claim lives unless kept: made once the request
// is built, kept once it is queued (its settling clears the flag), so a throw anywhere between
// leaves the session free.
class BusyClaim {
 public:
  explicit BusyClaim(bool* flag) : flag_(flag) { *flag_ = true; }
  BusyClaim(BusyClaim&& other) noexcept : flag_(other.flag_) { other.flag_ = nullptr; }
  BusyClaim& operator=(BusyClaim&&) = delete;
  ~BusyClaim() {
    if (flag_) *flag_ = false;
  }
  void keep() { flag_ = nullptr; }

 private:
  bool* flag_;
};

int int_field(Napi::Object o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("config.") + name + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 2147483647.0) || std::floor(d) != d) {
    throw Napi::RangeError::New(o.Env(), std::string("config.") + name + " must be a positive integer");
  }
  return static_cast<int>(d);
}

std::string shape_text(const std::vector<int>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); i++) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A config object from JavaScript, checked (types, then check_config).
Config config_argument(Napi::Env env, Napi::Object c) {
  Config config;
  config.vocab_size = int_field(c, "vocabSize");
  config.block_size = int_field(c, "blockSize");
  config.n_layer = int_field(c, "nLayer");
  config.n_head = int_field(c, "nHead");
  config.n_embd = int_field(c, "nEmbd");
  Napi::Value bias = c.Get("bias");
  if (!bias.IsBoolean()) throw Napi::TypeError::New(env, "config.bias must be a boolean");
  config.bias = bias.As<Napi::Boolean>().Value();
  const std::string problem = check_config(config);
  if (!problem.empty()) throw coded(Napi::RangeError::New(env, "invalid config: " + problem), "ERR_INVALID_CONFIG");
  return config;
}

// tensorLayout(config): [{ name, shape }] of every tensor, in the order load() takes them.
Napi::Value tensor_layout_of(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "tensorLayout(config): config must be an object");
  const std::vector<TensorSpec> layout = tensor_layout(config_argument(env, info[0].As<Napi::Object>()));
  Napi::Array out = Napi::Array::New(env, layout.size());
  for (uint32_t i = 0; i < layout.size(); i++) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("name", layout[i].name);
    Napi::Array shape = Napi::Array::New(env, layout[i].shape.size());
    for (uint32_t d = 0; d < layout[i].shape.size(); d++) shape.Set(d, Napi::Number::New(env, layout[i].shape[d]));
    t.Set("shape", shape);
    out.Set(i, t);
  }
  return out;
}

// Copies and checks token ids: an Int32Array of 1..max_length ids in [0, vocab_size).
std::vector<int> token_ids(Napi::Value value, int max_length, int vocab_size, int start) {
  Napi::Env env = value.Env();
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw Napi::TypeError::New(env, "ids must be an Int32Array");
  }
  Napi::Int32Array a = value.As<Napi::Int32Array>();
  const size_t n = a.ElementLength();
  if (n < 1) throw Napi::RangeError::New(env, "ids is empty: give at least one token id");
  if (n > static_cast<size_t>(max_length)) {
    throw Napi::RangeError::New(env, "prefill of " + std::to_string(n) + " tokens after " + std::to_string(start) +
                                         " exceeds blockSize (" + std::to_string(max_length + start) +
                                         "): reset the session or start a new one");
  }
  std::vector<int> ids(a.Data(), a.Data() + n);
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      throw Napi::RangeError::New(env, "ids[" + std::to_string(i) + "] = " + std::to_string(ids[i]) +
                                           " is not a token id (0 to " + std::to_string(vocab_size - 1) + ")");
    }
  }
  return ids;
}

// ---- workers ----------------------------------------------------------------------------------

class LoadWorker : public Napi::AsyncWorker {
 public:
  // `tensors` point into `weights`, the copy of the caller's arrays. `cuda`: the CUDA engine's
  // model on cuda->device, else (null) the CPU engine's.
  LoadWorker(Napi::Object receiver, std::shared_ptr<Handle> handle, FloatBuffer weights,
             std::vector<const float*> tensors, Isa isa, int threads, Precision precision, bool profile,
             std::unique_ptr<CudaOptions> cuda)
      : Napi::AsyncWorker(receiver.Env(), "microgpt.load"),
        receiver_(Napi::Persistent(receiver)),
        deferred_(Napi::Promise::Deferred::New(receiver.Env())),
        handle_(std::move(handle)),
        config_(handle_->config),
        weights_(std::move(weights)),
        tensors_(std::move(tensors)),
        isa_(isa),
        threads_(threads),
        precision_(precision),
        profile_(profile),
        cuda_(std::move(cuda)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      if (cuda_) {
        // Checked on the main thread (cuda_device_problem): the module is there and usable.
        model_ = std::make_shared<Transformer>(config_, tensors_, *cuda_status().api, *cuda_, precision_);
      } else {
        model_ = std::make_shared<Transformer>(config_, tensors_, isa_, threads_, precision_, profile_);
      }
    } catch (const CudaLoadError& e) {  // out of device memory, or the module refused the model
      code_ = "ERR_BACKEND_UNAVAILABLE";
      SetError(e.what());
    } catch (const std::system_error& e) {  // a thread of the pool could not be started
      code_ = "ERR_INVALID_ARGUMENT";
      SetError("threads " + std::to_string(threads_) + ": " + e.what() +
               "; the process is out of threads or address space: ask for fewer threads");
    } catch (const std::bad_alloc&) {
      SetError("out of memory while packing the weights into the native engine");
    } catch (const std::exception& e) {
      SetError(std::string("loading the weights failed: ") + e.what());
    }
    weights_ = FloatBuffer();  // packed now (or failed): the copy goes here, off the main thread
  }

  // Both run on the main thread; once the environment is being torn down there is nobody to
  // tell, and the Node-API calls below would fail: the model is dropped.
  void OnOK() override {
    handle_->loading = false;
    std::shared_ptr<Transformer> model = std::move(model_);
    if (*handle_->tearing_down) return;
    if (handle_->disposed) {
      deferred_.Reject(disposed_error(Env(), "model").Value());
      return;
    }
    try {
      handle_->engine = std::make_unique<Engine>(Env());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
      return;
    }
    handle_->model = std::move(model);
    handle_->report_memory();
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    handle_->loading = false;
    if (*handle_->tearing_down) return;
    Napi::Error error = e;
    if (code_ != nullptr) error = coded(error, code_);
    deferred_.Reject(error.Value());
  }

 private:
  Napi::ObjectReference receiver_;  // the JS model stays alive while the load is pending
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Handle> handle_;  // main thread only
  const Config config_;
  FloatBuffer weights_;
  std::vector<const float*> tensors_;
  Isa isa_;
  int threads_;
  Precision precision_;
  bool profile_;
  std::unique_ptr<CudaOptions> cuda_;
  std::shared_ptr<Transformer> model_;
  const char* code_ = nullptr;  // the error's code, if it has one
};

// ---- AddonModel -------------------------------------------------------------------------------

class AddonModel : public Napi::ObjectWrap<AddonModel> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Model",
                       {InstanceMethod<&AddonModel::load>("load"),
                        InstanceMethod<&AddonModel::forward>("forward"),
                        InstanceMethod<&AddonModel::append_many>("appendMany"),
                        InstanceMethod<&AddonModel::stats>("stats"),
                        InstanceMethod<&AddonModel::create_session>("createSession"),
                        InstanceMethod<&AddonModel::dispose>("dispose"),
                        InstanceAccessor<&AddonModel::isa>("isa"),
                        InstanceAccessor<&AddonModel::threads>("threads"),
                        InstanceAccessor<&AddonModel::precision>("precision"),
                        InstanceAccessor<&AddonModel::device>("device")});
  }

  // new Model(config, { threads, isa?, precision?: 'f32' | 'f16' | 'auto' (default 'f32'), device? })
  // device: a CUDA device's index, for the CUDA engine (cuda_loader.h); without it, the CPU's.
  explicit AddonModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonModel>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      throw Napi::TypeError::New(env, "new Model(config, options): config and options must be objects");
    }
    handle_ = std::make_shared<Handle>(env, addon_data(env)->tearing_down);
    handle_->config = config_argument(env, info[0].As<Napi::Object>());

    Napi::Object o = info[1].As<Napi::Object>();
    threads_ = int_field(o, "threads");
    if (threads_ > ThreadPool::kMaxThreads) {
      throw coded(Napi::RangeError::New(env, "threads must be an integer from 1 to " +
                                                 std::to_string(ThreadPool::kMaxThreads) + ", got " +
                                                 std::to_string(threads_)),
                  "ERR_INVALID_ARGUMENT");
    }
    isa_ = isa_best();
    if (o.Get("isa").IsString()) isa_ = isa_argument(env, o.Get("isa").As<Napi::String>().Utf8Value());
    Napi::Value precision = o.Get("precision");
    if (!precision.IsUndefined()) {
      const std::string p = precision.IsString() ? precision.As<Napi::String>().Utf8Value() : "";
      if (p == "f32") {
        precision_ = Precision::f32;
      } else if (p == "f16") {
        precision_ = Precision::f16;
      } else if (p == "auto") {
        precision_ = Precision::automatic;
      } else {
        throw Napi::TypeError::New(env, "options.precision must be 'f32', 'f16' or 'auto'");
      }
    }
    Napi::Value device = o.Get("device");
    if (!device.IsUndefined() && !device.IsNull()) {
      const double d = device.IsNumber() ? device.As<Napi::Number>().DoubleValue() : -1;
      if (!(d >= 0 && d <= 2147483647.0) || std::floor(d) != d) {
        throw coded(Napi::TypeError::New(env, "options.device must be a CUDA device's index (an integer from 0)"),
                    "ERR_INVALID_ARGUMENT");
      }
      device_ = static_cast<int>(d);
      // Probes the module once a process (cuda_loader.h).
      const std::string problem = cuda_device_problem(device_);
      if (!problem.empty()) {
        throw coded(Napi::Error::New(env, "backend 'cuda' is not available: " + problem), "ERR_BACKEND_UNAVAILABLE");
      }
    }
  }

 private:
  // load(tensors: { name, shape, data: Float32Array }[]): Promise<void>, one entry per tensor of
  // tensor_layout(config), in its order: each is checked by name, shape and length.
  // The arrays are copied here, before anything runs elsewhere: JavaScript may detach or transfer
  // them while the load runs (structuredClone with transfer, ArrayBuffer.prototype.transfer), and
  // the worker would then read freed memory. The copy is the cheap part of a load (figures:
  // docs/native-measurements.md).
  Napi::Value load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (handle_->disposed) throw disposed_error(env, "model");
    if (handle_->model || handle_->loading) throw Napi::Error::New(env, "the model is already loaded");
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "load(tensors): tensors must be an array");
    Napi::Array list = info[0].As<Napi::Array>();
    const std::vector<TensorSpec> layout = tensor_layout(handle_->config);
    if (list.Length() != layout.size()) {
      throw Napi::RangeError::New(env, "load: expected " + std::to_string(layout.size()) + " tensors, got " +
                                           std::to_string(list.Length()));
    }
    // Each tensor at a multiple of 16 floats (64 bytes), as the engine's own buffers are.
    std::vector<size_t> offsets(layout.size());
    size_t total = 0;
    for (size_t i = 0; i < layout.size(); i++) {
      offsets[i] = total;
      total += (layout[i].size() + 15) / 16 * 16;
    }
    FloatBuffer weights;
    try {
      weights = FloatBuffer(total, /*huge=*/true);
    } catch (const std::bad_alloc&) {
      throw Napi::RangeError::New(env, "load: out of memory for a copy of the weights (" +
                                           std::to_string(total * sizeof(float)) + " bytes)");
    }
    std::vector<const float*> tensors(layout.size(), nullptr);
    for (uint32_t i = 0; i < list.Length(); i++) {
      const TensorSpec& spec = layout[i];
      const std::string what = "load: tensor " + std::to_string(i) + " (" + spec.name + ")";
      Napi::Value v = list.Get(i);
      if (!v.IsObject()) throw Napi::TypeError::New(env, what + " must be an object { name, shape, data }");
      Napi::Object t = v.As<Napi::Object>();
      Napi::Value name = t.Get("name");
      if (!name.IsString() || name.As<Napi::String>().Utf8Value() != spec.name) {
        throw Napi::TypeError::New(env, what + ": got a tensor named " +
                                            (name.IsString() ? "\"" + name.As<Napi::String>().Utf8Value() + "\"" : "(no name)") +
                                            "; give the tensors in the order of tensorLayout(config)");
      }
      Napi::Value shape = t.Get("shape");
      bool same_shape = shape.IsArray() && shape.As<Napi::Array>().Length() == spec.shape.size();
      for (uint32_t d = 0; same_shape && d < spec.shape.size(); d++) {
        Napi::Value n = shape.As<Napi::Array>().Get(d);
        same_shape = n.IsNumber() && n.As<Napi::Number>().DoubleValue() == spec.shape[d];
      }
      if (!same_shape) throw Napi::RangeError::New(env, what + " must have shape " + shape_text(spec.shape));
      // Data last: a getter may detach an array, so each one is copied as soon as it is checked,
      // with no JavaScript in between.
      Napi::Value data = t.Get("data");
      if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
        throw Napi::TypeError::New(env, what + ": data must be a Float32Array");
      }
      Napi::Float32Array a = data.As<Napi::Float32Array>();
      if (a.ElementLength() != spec.size()) {
        throw Napi::RangeError::New(env, what + " has " + std::to_string(a.ElementLength()) + " elements, expected " +
                                             std::to_string(spec.size()));
      }
      float* copy = weights.data() + offsets[i];
      std::memcpy(copy, a.Data(), spec.size() * sizeof(float));
      tensors[i] = copy;
    }
    // Read here, on the main thread: getenv is not safe against process.env's setenv elsewhere.
    const char* profile_env = std::getenv("MICROGPT_PROFILE");
    const bool profile = profile_env != nullptr && std::string(profile_env) == "1";
    std::unique_ptr<CudaOptions> cuda;
    if (device_ >= 0) {
      cuda = std::make_unique<CudaOptions>();
      cuda->device = device_;
      cuda->device_name = cuda_status().devices[static_cast<size_t>(device_)].name;
      cuda->profile = profile;
      // MICROGPT_CUDA_GRAPHS=0: every kernel of a decode step launched, for the tests to compare.
      const char* graphs = std::getenv("MICROGPT_CUDA_GRAPHS");
      cuda->graphs = !(graphs != nullptr && std::string(graphs) == "0");
    }
    auto* worker = new LoadWorker(Value(), handle_, std::move(weights), std::move(tensors), isa_, threads_, precision_,
                                  profile, std::move(cuda));
    handle_->loading = true;
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  }

  // forward(ids: Int32Array): Promise<Float32Array>, logits (T, vocabSize) of every position.
  Napi::Value forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::shared_ptr<Transformer> model = live(env);
    const Config& c = handle_->config;
    std::vector<int> ids = token_ids(info[0], c.block_size, c.vocab_size, 0);
    Napi::Float32Array out = Napi::Float32Array::New(env, ids.size() * static_cast<size_t>(c.vocab_size));
    std::vector<std::unique_ptr<PassEntry>> entries;
    // Its scratch cache may be a new one: V8 hears of it once the pass has settled.
    std::weak_ptr<Handle> handle = handle_;
    entries.push_back(std::make_unique<PassEntry>(Value(), out, nullptr, std::move(ids), 0, true, [handle](bool) {
      if (auto h = handle.lock()) h->report_memory();
    }));
    Napi::Promise p = entries.front()->deferred.Promise();
    handle_->engine->submit(std::move(model), std::move(entries));
    return p;
  }

  // appendMany(sessions: Session[], ids: Int32Array[], select?: ({ topK, limit } | undefined)[]),
  // as sessions[i].append(ids[i], select?.[i]) for every i, queued as one group so that they share batched
  // passes and settle together. A problem with one pair rejects its promise only.
  Napi::Value append_many(const Napi::CallbackInfo& info);

  // stats(): what Transformer::run has done; proof of batching for the tests.
  Napi::Value stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const BatchStats s = live(env)->stats();
    Napi::Object o = Napi::Object::New(env);
    o.Set("passes", Napi::Number::New(env, static_cast<double>(s.passes)));
    o.Set("requests", Napi::Number::New(env, static_cast<double>(s.requests)));
    o.Set("decodeRows", Napi::Number::New(env, static_cast<double>(s.decode_rows)));
    o.Set("largestBatch", Napi::Number::New(env, static_cast<double>(s.largest_batch)));
    o.Set("busySeconds", Napi::Number::New(env, s.busy_seconds));
    o.Set("cachesAllocated", Napi::Number::New(env, static_cast<double>(s.caches_allocated)));
    o.Set("sharedPasses", Napi::Number::New(env, static_cast<double>(s.shared_passes)));
    o.Set("widestLease", Napi::Number::New(env, static_cast<double>(s.widest_lease)));
    if (s.profiled) {
      Napi::Object phases = Napi::Object::New(env);
      for (int p = 0; p < kPhases; p++) phases.Set(phase_name(static_cast<Phase>(p)), Napi::Number::New(env, s.phase_seconds[p]));
      o.Set("phaseSeconds", phases);
    }
    if (s.device >= 0) {
      o.Set("deviceBytes", Napi::Number::New(env, static_cast<double>(s.device_bytes)));
      o.Set("graphLaunches", Napi::Number::New(env, static_cast<double>(s.graph_launches)));
      o.Set("graphs", Napi::Number::New(env, static_cast<double>(s.graphs)));
      o.Set("selectedRows", Napi::Number::New(env, static_cast<double>(s.selected_rows)));
      if (s.profiled) o.Set("hostSeconds", Napi::Number::New(env, s.host_seconds));
    }
    return o;
  }

  Napi::Value create_session(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    live(env);
    Napi::External<std::shared_ptr<Handle>> h = Napi::External<std::shared_ptr<Handle>>::New(env, &handle_);
    return addon_data(env)->session_class.New({h});
  }

  void dispose(const Napi::CallbackInfo&) {
    handle_->disposed = true;
    handle_->model.reset();  // freed now, or when the last pending pass ends
    handle_->report_memory();
    if (handle_->engine) handle_->engine->close();  // its thread ends once that pass has settled
  }

  Napi::Value isa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), isa_name(isa_)); }
  Napi::Value threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), threads_); }
  // The CUDA device's index, or null for the CPU engine.
  Napi::Value device(const Napi::CallbackInfo& info) {
    return device_ < 0 ? info.Env().Null() : Napi::Number::New(info.Env(), device_);
  }
  // 'f32' or 'f16' once loaded ('auto' resolved); the requested precision before.
  Napi::Value precision(const Napi::CallbackInfo& info) {
    Precision p = precision_;
    if (handle_->model) p = handle_->model->precision();
    return Napi::String::New(info.Env(), p == Precision::f16 ? "f16" : p == Precision::f32 ? "f32" : "auto");
  }

  std::shared_ptr<Transformer> live(Napi::Env env) {
    if (handle_->disposed) throw disposed_error(env, "model");
    if (!handle_->model) throw Napi::Error::New(env, "the model is not loaded yet: await load() first");
    return handle_->model;
  }

  std::shared_ptr<Handle> handle_;
  Isa isa_ = Isa::scalar;
  int threads_ = 1;
  Precision precision_ = Precision::f32;
  int device_ = -1;  // the CUDA device, or -1 for the CPU engine
};

// ---- AddonSession -----------------------------------------------------------------------------

class AddonSession : public Napi::ObjectWrap<AddonSession> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Session",
                       {InstanceMethod<&AddonSession::append>("append"),
                        InstanceMethod<&AddonSession::reset>("reset"),
                        InstanceMethod<&AddonSession::dispose>("dispose"),
                        InstanceAccessor<&AddonSession::length>("length")});
  }

  // Made by Model.createSession only: the argument is an External of the model's handle.
  explicit AddonSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AddonSession>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "sessions are made by Model.createSession()");
    }
    handle_ = *info[0].As<Napi::External<std::shared_ptr<Handle>>>().Data();
    state_ = std::make_shared<SessionState>();
  }

 private:
  // append(ids: Int32Array, select?: { topK, limit }): Promise<Float32Array | { values, ids }>,
  // the logits (vocabSize) of the last id, or its top-k candidates where select asked and the
  // engine gives them (PassEntry): a prefill of the TypeScript session, or one decode step.
  Napi::Value append(const Napi::CallbackInfo& info) {
    std::vector<std::unique_ptr<PassEntry>> entries;
    entries.push_back(begin(info[0], info[1]));
    BusyClaim busy = claim();
    Napi::Promise p = entries.front()->deferred.Promise();
    handle_->engine->submit(handle_->model, std::move(entries));
    busy.keep();
    return p;
  }

 public:
  // Checks a prefill of `ids` (and `select`: undefined, or top-k candidates asked for): the
  // request for the engine. Throws (a JS error) when the session cannot take it. The caller
  // claims the session (claim()) and keeps the claim once the request is queued.
  std::unique_ptr<PassEntry> begin(Napi::Value ids_value, Napi::Value select) {
    Napi::Env env = ids_value.Env();
    if (!state_) throw disposed_error(env, "session");
    if (handle_->disposed || !handle_->model) throw disposed_error(env, "model");
    if (busy_) throw busy_error(env);
    const Config& c = handle_->config;
    std::vector<int> ids = token_ids(ids_value, c.block_size - length_, c.vocab_size, length_);
    const int start = length_;
    const int T = static_cast<int>(ids.size());
    // One logits array per session, reused by every call (the interface allows it): no 200 KB
    // allocation per token for a GPT-2-sized vocabulary.
    if (logits_.IsEmpty()) logits_ = Napi::Persistent(static_cast<Napi::Object>(Napi::Float32Array::New(env, c.vocab_size)));
    Napi::Float32Array out = logits_.Value().As<Napi::Float32Array>();
    int top_k = 0, top_limit = 0;
    if (!select.IsUndefined() && !select.IsNull()) top_k = select_arg(select, c.vocab_size, &top_limit);
    auto entry = std::make_unique<PassEntry>(Value(), out, state_, std::move(ids), start, false, [this, start, T](bool ok) {
      // Main thread; the entry's receiver reference keeps this object alive until now.
      busy_ = false;
      length_ = ok ? start + T : start;
      if (!state_) {  // disposed while running
        logits_.Reset();
        top_ids_.Reset();
      }
      handle_->report_memory();  // the first prefill may have made a KV cache
    });
    if (top_k > 0) {
      // As the logits: one array per session, reused by every call.
      if (top_ids_.IsEmpty()) top_ids_ = Napi::Persistent(static_cast<Napi::Object>(Napi::Int32Array::New(env, c.vocab_size)));
      Napi::Int32Array top_ids = top_ids_.Value().As<Napi::Int32Array>();
      entry->top_ids_ref = Napi::Persistent(static_cast<Napi::Object>(top_ids));
      entry->request.top_k = top_k;
      entry->request.top_limit = top_limit;
      entry->request.top_ids = top_ids.Data();
    }
    return entry;
  }
  BusyClaim claim() { return BusyClaim(&busy_); }
  bool belongs_to(const std::shared_ptr<Handle>& handle) const { return handle_ == handle; }

 private:
  void reset(const Napi::CallbackInfo& info) {
    if (!state_) throw disposed_error(info.Env(), "session");
    if (busy_) throw Napi::Error::New(info.Env(), "cannot reset a session while its prefill is running");
    length_ = 0;
  }

  void dispose(const Napi::CallbackInfo&) {
    state_.reset();  // the KV cache goes now, or when the pending prefill ends
    if (!busy_) {
      logits_.Reset();
      top_ids_.Reset();
    }
  }

  // select: { topK, limit }, integers with 0 < topK < limit <= vocabSize. Returns topK.
  static int select_arg(Napi::Value select, int vocab_size, int* limit) {
    Napi::Env env = select.Env();
    if (!select.IsObject()) throw Napi::TypeError::New(env, "select must be an object { topK, limit }");
    Napi::Object o = select.As<Napi::Object>();
    const Napi::Value k = o.Get("topK"), l = o.Get("limit");
    if (!k.IsNumber() || !l.IsNumber()) throw Napi::TypeError::New(env, "select.topK and select.limit must be integers");
    const double top_k = k.As<Napi::Number>().DoubleValue(), top_limit = l.As<Napi::Number>().DoubleValue();
    if (!(std::floor(top_k) == top_k && std::floor(top_limit) == top_limit && top_limit >= 2 && top_limit <= vocab_size &&
          top_k >= 1 && top_k < top_limit)) {
      throw Napi::RangeError::New(env, "select must have integers 0 < topK < limit <= vocabSize (" +
                                           std::to_string(vocab_size) + ")");
    }
    *limit = static_cast<int>(top_limit);
    return static_cast<int>(top_k);
  }

  Napi::Value length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), length_); }

  std::shared_ptr<Handle> handle_;
  std::shared_ptr<SessionState> state_;
  Napi::ObjectReference logits_;  // (vocab_size), the result of every prefill
  Napi::ObjectReference top_ids_;  // (vocab_size), the ids of top-k candidates, made when first asked
  int length_ = 0;
  bool busy_ = false;
};

}  // namespace

Napi::Value AddonModel::append_many(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::shared_ptr<Transformer> model = live(env);
  if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsArray()) {
    throw Napi::TypeError::New(env, "appendMany(sessions, ids): sessions and ids must be arrays");
  }
  Napi::Array sessions = info[0].As<Napi::Array>();
  Napi::Array ids = info[1].As<Napi::Array>();
  const bool selecting = info.Length() >= 3 && !info[2].IsUndefined();
  if (selecting && (!info[2].IsArray() || info[2].As<Napi::Array>().Length() != sessions.Length())) {
    throw Napi::TypeError::New(env, "appendMany(sessions, ids, select): select must be an array, one entry per session");
  }
  if (sessions.Length() != ids.Length()) {
    throw Napi::RangeError::New(env, "appendMany: " + std::to_string(sessions.Length()) + " sessions but " +
                                         std::to_string(ids.Length()) + " id arrays; give one per session");
  }
  Napi::Function session_class = addon_data(env)->session_class.Value();
  Napi::Array promises = Napi::Array::New(env, sessions.Length());
  std::vector<std::unique_ptr<PassEntry>> entries;
  std::vector<BusyClaim> claims;  // let go unless the group is queued
  entries.reserve(sessions.Length());
  claims.reserve(sessions.Length());
  for (uint32_t i = 0; i < sessions.Length(); i++) {
    try {
      Napi::Value v = sessions.Get(i);
      if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(session_class)) {
        throw Napi::TypeError::New(env, "appendMany: sessions[" + std::to_string(i) + "] is not a Session");
      }
      AddonSession* session = AddonSession::Unwrap(v.As<Napi::Object>());
      if (!session->belongs_to(handle_)) {
        throw Napi::Error::New(env, "appendMany: sessions[" + std::to_string(i) + "] belongs to another model");
      }
      std::unique_ptr<PassEntry> entry =
          session->begin(ids.Get(i), selecting ? info[2].As<Napi::Array>().Get(i) : env.Undefined());
      BusyClaim busy = session->claim();  // a session twice in the group: the second finds it busy
      promises.Set(i, entry->deferred.Promise());
      entries.push_back(std::move(entry));
      claims.push_back(std::move(busy));
    } catch (const Napi::Error& e) {
      Napi::Promise::Deferred d = Napi::Promise::Deferred::New(env);
      promises.Set(i, d.Promise());  // first, so that a throw here leaves no rejection unseen
      d.Reject(e.Value());
    }
  }
  if (!entries.empty()) {
    handle_->engine->submit(std::move(model), std::move(entries));
    for (BusyClaim& c : claims) c.keep();
  }
  return promises;
}

void register_model_classes(Napi::Env env, Napi::Object exports, AddonData* data) {
  Napi::Function model = AddonModel::define(env);
  Napi::Function session = AddonSession::define(env);
  data->model_class = Napi::Persistent(model);
  data->session_class = Napi::Persistent(session);
  exports.Set("Model", model);
  exports.Set("Session", session);
  exports.Set("tensorLayout", Napi::Function::New(env, tensor_layout_of, "tensorLayout"));
}

}  // namespace microgpt
