// The Model and Session classes JavaScript sees. Every forward pass runs on a Napi::AsyncWorker
// (libuv's thread pool) and settles a Promise; the event loop never waits for a kernel.
//
// Lifetime: a NativeModel owns a shared_ptr<Model>; each queued worker holds another, so
// dispose() drops the model's reference at once and the memory goes when the last pending pass
// ends. Sessions hold the NativeModel's shared_ptr<Handle>, not the Model, so a disposed model is
// freed even while its sessions live (they then fail with "disposed"). The KV cache of a session
// is shared the same way with its workers.
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "addon.h"
#include "model.h"

namespace microgpt {

namespace {

// What a model's JS objects share; touched on the main thread only.
struct Handle {
  Config config;
  std::shared_ptr<Model> model;  // null until load() resolves, and after dispose()
  bool loading = false;
  bool disposed = false;
};

struct SessionState {
  std::unique_ptr<KVCache> cache;  // allocated by the first prefill, on the worker thread
};

Napi::Error disposed_error(Napi::Env env, const char* what) {
  Napi::Error e = Napi::Error::New(env, std::string("the ") + what + " has been disposed");
  e.Set("code", Napi::String::New(env, "ERR_DISPOSED"));
  return e;
}

int int_field(Napi::Object o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("config.") + name + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 2147483647.0) || std::floor(d) != d) {
    throw Napi::RangeError::New(o.Env(), std::string("config.") + name + " must be a positive integer");
  }
  return static_cast<int>(d);
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
  LoadWorker(Napi::Object receiver, std::shared_ptr<Handle> handle, std::vector<const float*> tensors,
             std::vector<Napi::ObjectReference> keep, Isa isa, int threads)
      : Napi::AsyncWorker(receiver.Env(), "microgpt.load"),
        receiver_(Napi::Persistent(receiver)),
        deferred_(Napi::Promise::Deferred::New(receiver.Env())),
        handle_(std::move(handle)),
        tensors_(std::move(tensors)),
        keep_(std::move(keep)),
        isa_(isa),
        threads_(threads) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      model_ = std::make_shared<Model>(handle_->config, tensors_, isa_, threads_);
    } catch (const std::bad_alloc&) {
      SetError("out of memory while copying the weights into the native engine");
    } catch (const std::exception& e) {
      SetError(std::string("loading the weights failed: ") + e.what());
    }
  }
  void OnOK() override {
    handle_->loading = false;
    if (handle_->disposed) {
      model_.reset();
      deferred_.Reject(disposed_error(Env(), "model").Value());
      return;
    }
    handle_->model = std::move(model_);
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    handle_->loading = false;
    deferred_.Reject(e.Value());
  }

 private:
  Napi::ObjectReference receiver_;  // the JS model or session stays alive while work is pending
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Handle> handle_;
  std::vector<const float*> tensors_;
  std::vector<Napi::ObjectReference> keep_;  // the weight arrays stay alive while we copy them
  Isa isa_;
  int threads_;
  std::shared_ptr<Model> model_;
};

// A forward pass: of a whole sequence into a fresh cache (forward), or of new tokens appended to
// a session's cache (prefill). Writes into a Float32Array made on the main thread.
class ForwardWorker : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Object receiver, std::shared_ptr<Model> model, std::shared_ptr<SessionState> session,
                std::vector<int> ids, int start, Napi::Float32Array out, bool all_positions,
                std::function<void(bool)> on_settled)
      : Napi::AsyncWorker(receiver.Env(), "microgpt.forward"),
        receiver_(Napi::Persistent(receiver)),
        deferred_(Napi::Promise::Deferred::New(receiver.Env())),
        model_(std::move(model)),
        session_(std::move(session)),
        ids_(std::move(ids)),
        start_(start),
        out_ref_(Napi::Persistent(static_cast<Napi::Object>(out))),
        out_(out.Data()),
        all_positions_(all_positions),
        on_settled_(std::move(on_settled)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      KVCache scratch_cache;
      KVCache* cache = &scratch_cache;
      if (session_) {
        if (!session_->cache) session_->cache = std::make_unique<KVCache>(model_->new_kv_cache(model_->config().block_size));
        cache = session_->cache.get();
      } else {
        scratch_cache = model_->new_kv_cache(static_cast<int>(ids_.size()));
      }
      model_->forward(*cache, start_, ids_.data(), static_cast<int>(ids_.size()), out_, all_positions_);
    } catch (const std::bad_alloc&) {
      SetError("out of memory in the native engine's forward pass");
    } catch (const std::exception& e) {
      SetError(std::string("the native forward pass failed: ") + e.what());
    }
  }
  void OnOK() override {
    if (on_settled_) on_settled_(true);
    deferred_.Resolve(out_ref_.Value());
  }
  void OnError(const Napi::Error& e) override {
    if (on_settled_) on_settled_(false);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::ObjectReference receiver_;  // the JS model or session stays alive while work is pending
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Model> model_;
  std::shared_ptr<SessionState> session_;
  std::vector<int> ids_;
  int start_;
  Napi::ObjectReference out_ref_;
  float* out_;
  bool all_positions_;
  std::function<void(bool)> on_settled_;  // runs on the main thread before the promise settles
};

// ---- Model ------------------------------------------------------------------------------------

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Model",
                       {InstanceMethod<&NativeModel::load>("load"),
                        InstanceMethod<&NativeModel::forward>("forward"),
                        InstanceMethod<&NativeModel::create_session>("createSession"),
                        InstanceMethod<&NativeModel::dispose>("dispose"),
                        InstanceAccessor<&NativeModel::isa>("isa"),
                        InstanceAccessor<&NativeModel::threads>("threads")});
  }

  // new Model(config, { threads, isa })
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      throw Napi::TypeError::New(env, "new Model(config, options): config and options must be objects");
    }
    Napi::Object c = info[0].As<Napi::Object>();
    handle_ = std::make_shared<Handle>();
    Config& config = handle_->config;
    config.vocab_size = int_field(c, "vocabSize");
    config.block_size = int_field(c, "blockSize");
    config.n_layer = int_field(c, "nLayer");
    config.n_head = int_field(c, "nHead");
    config.n_embd = int_field(c, "nEmbd");
    Napi::Value bias = c.Get("bias");
    if (!bias.IsBoolean()) throw Napi::TypeError::New(env, "config.bias must be a boolean");
    config.bias = bias.As<Napi::Boolean>().Value();
    const std::string problem = check_config(config);
    if (!problem.empty()) throw Napi::RangeError::New(env, "invalid config: " + problem);

    Napi::Object o = info[1].As<Napi::Object>();
    threads_ = int_field(o, "threads");
    if (threads_ > 1024) throw Napi::RangeError::New(env, "threads must be at most 1024");
    isa_ = isa_best();
    if (o.Get("isa").IsString()) isa_ = isa_argument(env, o.Get("isa").As<Napi::String>().Utf8Value());
  }

 private:
  // load(tensors: (Float32Array | null)[]): Promise<void>, in the binding's tensor order.
  Napi::Value load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (handle_->disposed) throw disposed_error(env, "model");
    if (handle_->model || handle_->loading) throw Napi::Error::New(env, "the model is already loaded");
    if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "load(tensors): tensors must be an array");
    Napi::Array list = info[0].As<Napi::Array>();
    const std::vector<size_t> sizes = tensor_sizes(handle_->config);
    if (list.Length() != sizes.size()) {
      throw Napi::RangeError::New(env, "load: expected " + std::to_string(sizes.size()) + " tensors, got " +
                                           std::to_string(list.Length()));
    }
    std::vector<const float*> tensors(sizes.size(), nullptr);
    std::vector<Napi::ObjectReference> keep;
    for (uint32_t i = 0; i < list.Length(); i++) {
      Napi::Value v = list.Get(i);
      if (sizes[i] == 0) {
        if (!v.IsNull() && !v.IsUndefined()) throw Napi::TypeError::New(env, "load: tensor " + std::to_string(i) + " must be null (no bias)");
        continue;
      }
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
        throw Napi::TypeError::New(env, "load: tensor " + std::to_string(i) + " must be a Float32Array");
      }
      Napi::Float32Array a = v.As<Napi::Float32Array>();
      if (a.ElementLength() != sizes[i]) {
        throw Napi::RangeError::New(env, "load: tensor " + std::to_string(i) + " has " + std::to_string(a.ElementLength()) +
                                             " elements, expected " + std::to_string(sizes[i]));
      }
      tensors[i] = a.Data();
      keep.push_back(Napi::Persistent(a.As<Napi::Object>()));
    }
    handle_->loading = true;
    auto* worker = new LoadWorker(Value(), handle_, std::move(tensors), std::move(keep), isa_, threads_);
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  }

  // forward(ids: Int32Array): Promise<Float32Array>, logits (T, vocabSize) of every position.
  Napi::Value forward(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::shared_ptr<Model> model = live(env);
    const Config& c = handle_->config;
    std::vector<int> ids = token_ids(info[0], c.block_size, c.vocab_size, 0);
    Napi::Float32Array out = Napi::Float32Array::New(env, ids.size() * static_cast<size_t>(c.vocab_size));
    auto* worker = new ForwardWorker(Value(), std::move(model), nullptr, std::move(ids), 0, out, true, nullptr);
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
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
  }

  Napi::Value isa(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), isa_name(isa_)); }
  Napi::Value threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), threads_); }

  std::shared_ptr<Model> live(Napi::Env env) {
    if (handle_->disposed) throw disposed_error(env, "model");
    if (!handle_->model) throw Napi::Error::New(env, "the model is not loaded yet: await load() first");
    return handle_->model;
  }

  std::shared_ptr<Handle> handle_;
  Isa isa_ = Isa::scalar;
  int threads_ = 1;
};

// ---- Session ----------------------------------------------------------------------------------

class NativeSession : public Napi::ObjectWrap<NativeSession> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Session",
                       {InstanceMethod<&NativeSession::prefill>("prefill"),
                        InstanceMethod<&NativeSession::reset>("reset"),
                        InstanceMethod<&NativeSession::dispose>("dispose"),
                        InstanceAccessor<&NativeSession::length>("length")});
  }

  // Made by Model.createSession only: the argument is an External of the model's handle.
  explicit NativeSession(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeSession>(info) {
    if (info.Length() < 1 || !info[0].IsExternal()) {
      throw Napi::TypeError::New(info.Env(), "sessions are made by Model.createSession()");
    }
    handle_ = *info[0].As<Napi::External<std::shared_ptr<Handle>>>().Data();
    state_ = std::make_shared<SessionState>();
  }

 private:
  // prefill(ids: Int32Array): Promise<Float32Array>, the logits (vocabSize) of the last id.
  Napi::Value prefill(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!state_) throw disposed_error(env, "session");
    if (handle_->disposed || !handle_->model) throw disposed_error(env, "model");
    if (busy_) throw Napi::Error::New(env, "a prefill on this session is still running: await it before the next call");
    const Config& c = handle_->config;
    std::vector<int> ids = token_ids(info[0], c.block_size - length_, c.vocab_size, length_);
    const int start = length_;
    const int T = static_cast<int>(ids.size());
    // One logits array per session, reused by every call (the interface allows it): no 200 KB
    // allocation per token for a GPT-2-sized vocabulary.
    if (logits_.IsEmpty()) logits_ = Napi::Persistent(static_cast<Napi::Object>(Napi::Float32Array::New(env, c.vocab_size)));
    Napi::Float32Array out = logits_.Value().As<Napi::Float32Array>();
    busy_ = true;
    auto* worker = new ForwardWorker(Value(), handle_->model, state_, std::move(ids), start, out, false, [this, start, T](bool ok) {
      // Main thread; the worker's receiver reference keeps this object alive until now.
      busy_ = false;
      length_ = ok ? start + T : start;
      if (!state_) logits_.Reset();  // disposed while running
    });
    Napi::Promise p = worker->promise();
    worker->Queue();
    return p;
  }

  void reset(const Napi::CallbackInfo& info) {
    if (!state_) throw disposed_error(info.Env(), "session");
    if (busy_) throw Napi::Error::New(info.Env(), "cannot reset a session while its prefill is running");
    length_ = 0;
  }

  void dispose(const Napi::CallbackInfo&) {
    state_.reset();  // the KV cache goes now, or when the pending prefill ends
    if (!busy_) logits_.Reset();
  }

  Napi::Value length(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), length_); }

  std::shared_ptr<Handle> handle_;
  std::shared_ptr<SessionState> state_;
  Napi::ObjectReference logits_;  // (vocab_size), the result of every prefill
  int length_ = 0;
  bool busy_ = false;
};

}  // namespace

void register_model_classes(Napi::Env env, Napi::Object exports, AddonData* data) {
  Napi::Function model = NativeModel::define(env);
  Napi::Function session = NativeSession::define(env);
  data->model_class = Napi::Persistent(model);
  data->session_class = Napi::Persistent(session);
  exports.Set("Model", model);
  exports.Set("Session", session);
}

}  // namespace microgpt
