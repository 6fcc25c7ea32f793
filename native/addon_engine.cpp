#include "addon_engine.h"

#include <exception>
#include <system_error>
#include <utility>

namespace microgpt {

PassEntry::PassEntry(Napi::Object receiver_object, Napi::Float32Array out, std::shared_ptr<SessionState> state,
                     std::vector<int> token_ids, int start, bool all_positions, std::function<void(bool)> settled)
    : receiver(Napi::Persistent(receiver_object)),
      deferred(Napi::Promise::Deferred::New(receiver_object.Env())),
      out_ref(Napi::Persistent(static_cast<Napi::Object>(out))),
      session(std::move(state)),
      ids(std::move(token_ids)),
      request{nullptr, start, nullptr, static_cast<int>(ids.size()), out.Data(), all_positions, std::string()},
      on_settled(std::move(settled)) {}

Engine::Engine(Napi::Env env) : core_(std::make_shared<Core>()), env_(env) {
  auto* context = new std::shared_ptr<Core>(core_);  // the function's; freed by finalize()
  napi_threadsafe_function results = nullptr;
  napi_status status = napi_create_threadsafe_function(env, nullptr, nullptr, Napi::String::New(env, "microgpt.engine"),
                                                       0, 1, context, finalize, context, call_js, &results);
  if (status != napi_ok) {
    delete context;
    throw Napi::Error::New(env, "could not start the native engine (napi_create_threadsafe_function failed)");
  }
  napi_unref_threadsafe_function(env, results);  // only work in flight keeps the process alive
  core_->results = results;
  Core* core = core_.get();
  // The Core outlives the thread: shut_down() joins it before anyone lets the Core go.
  try {
    core_->thread = std::thread([core] { core->loop(); });
  } catch (const std::system_error& e) {
    core_->shut_down();
    Napi::Error error = Napi::Error::New(env, std::string("could not start the model's engine thread (") + e.what() +
                                                  "): the process is out of threads or address space; ask for fewer "
                                                  "threads, or dispose of other models");
    error.Set("code", Napi::String::New(env, "ERR_INVALID_ARGUMENT"));
    throw error;
  }
}

Engine::~Engine() { core_->shut_down(); }

void Engine::submit(std::shared_ptr<Transformer> model, std::vector<std::unique_ptr<PassEntry>> entries) {
  Core& core = *core_;
  // The thread-safe function holds the event loop open exactly while something is pending.
  if (core.pending++ == 0 && core.results != nullptr) napi_ref_threadsafe_function(env_, core.results);
  {
    std::lock_guard<std::mutex> lock(core.mutex);
    core.inbox.push_back(Group{std::move(model), std::move(entries)});
  }
  core.wake.notify_one();
}

void Engine::close() {
  core_->closing = true;
  if (core_->pending == 0) core_->shut_down();
}

void Engine::Core::loop() {
  for (;;) {
    // Waits asleep, not spinning: spinning through the gap between two decode steps gained no
    // per-token time and took a core from the main thread's sampling; the pool's workers
    // linger for the pass that follows.
    std::vector<Group> groups;
    {
      std::unique_lock<std::mutex> lock(mutex);
      wake.wait(lock, [this] { return !inbox.empty() || stop; });
      if (stop) return;  // shut_down() drops what is left, on the main thread
      while (!inbox.empty()) {
        groups.push_back(std::move(inbox.front()));
        inbox.pop_front();
      }
    }
    run(groups);
    std::lock_guard<std::mutex> lock(mutex);
    for (Group& g : groups) done.push_back(std::move(g));
    // Nonblocking: the queue is unbounded. Fails only once the environment is going away, and
    // then nobody is waiting for these results.
    if (results) napi_call_threadsafe_function(results, nullptr, napi_tsfn_nonblocking);
  }
}

// Engine thread: every request of every group through the model, as few batched passes as fit.
void Engine::run(std::vector<Group>& groups) {
  std::vector<ForwardRequest*> ready;
  for (Group& g : groups) {
    for (auto& e : g.entries) {
      try {
        if (e->session) {
          if (!e->session->cache) e->session->cache = g.model->kv_cache();
          e->request.cache = e->session->cache.get();
        } else {
          e->scratch_cache = g.model->kv_cache();
          e->request.cache = e->scratch_cache.get();
        }
        e->request.ids = e->ids.data();
        ready.push_back(&e->request);
      } catch (const std::bad_alloc&) {
        e->error = "out of memory in the native engine's forward pass";
      } catch (const std::exception& ex) {  // a CUDA model's cache: out of device memory
        e->error = ex.what();
      }
    }
  }
  // One engine per model, so every group's model is the same one.
  try {
    if (!ready.empty()) groups.front().model->run(ready.data(), static_cast<int>(ready.size()));
  } catch (const std::exception& ex) {  // checked before queuing; defence in depth
    for (ForwardRequest* r : ready) r->error = std::string("the native forward pass failed: ") + ex.what();
  }
}

void Engine::call_js(napi_env env, napi_value, void* context, void*) {
  if (env == nullptr) return;  // the environment is going away; shut_down() drops the groups
  // A C callback: nothing may leave it (settle() already keeps JavaScript's errors in).
  try {
    (*static_cast<std::shared_ptr<Core>*>(context))->settle(Napi::Env(env));
  } catch (...) {
  }
}

void Engine::finalize(napi_env, void* data, void*) {
  auto* core = static_cast<std::shared_ptr<Core>*>(data);
  {
    std::lock_guard<std::mutex> lock((*core)->mutex);
    (*core)->results = nullptr;
  }
  delete core;
}

void Engine::Core::settle(Napi::Env env) {
  std::deque<Group> finished;
  {
    std::lock_guard<std::mutex> lock(mutex);
    finished.swap(done);
  }
  for (Group& g : finished) {
    for (auto& e : g.entries) {
      const std::string& error = e->error.empty() ? e->request.error : e->error;
      // Nothing may throw out of a thread-safe function's callback: a JS exception here would
      // end the process. Once the environment is stopping, every Node-API call fails: the
      // promises then stay unsettled, as nobody can see them any more.
      try {
        if (e->on_settled) e->on_settled(error.empty());
        if (error.empty() && e->request.top_count > 0) {
          const size_t n = static_cast<size_t>(e->request.top_count);
          Napi::Float32Array out = e->out_ref.Value().As<Napi::Float32Array>();
          Napi::Int32Array ids = e->top_ids_ref.Value().As<Napi::Int32Array>();
          Napi::Object top = Napi::Object::New(env);
          top.Set("values", Napi::Float32Array::New(env, n, out.ArrayBuffer(), out.ByteOffset()));
          top.Set("ids", Napi::Int32Array::New(env, n, ids.ArrayBuffer(), ids.ByteOffset()));
          e->deferred.Resolve(top);
        } else if (error.empty()) {
          e->deferred.Resolve(e->out_ref.Value());
        } else {
          e->deferred.Reject(Napi::Error::New(env, error).Value());
        }
      } catch (...) {  // a terminating worker refuses to run JS; the results go unread
      }
    }
  }
  pending -= static_cast<int>(finished.size());
  finished.clear();  // the entries' references go here, on the main thread
  if (pending == 0) {
    if (closing) {
      shut_down();
    } else if (results != nullptr) {
      napi_unref_threadsafe_function(env, results);
    }
  }
}

void Engine::Core::shut_down() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stop = true;
  }
  wake.notify_all();
  if (thread.joinable()) thread.join();
  napi_threadsafe_function function = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex);
    std::swap(function, results);
  }
  if (function != nullptr) napi_release_threadsafe_function(function, napi_tsfn_release);
  // Whatever never settled (the environment's teardown): its references go on this thread.
  inbox.clear();
  done.clear();
  pending = 0;
}

}  // namespace microgpt
