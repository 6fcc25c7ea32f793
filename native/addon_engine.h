// Where a model's forward passes run, and how their results get back to JavaScript.
//
// Each loaded model has an Engine: one thread of our own that takes the requests JavaScript
// queued (a group per call: Model.appendMany's sessions, one append, one forward), runs
// everything waiting through Transformer::run as batched passes, and hands the finished groups back
// through a thread-safe function, whose callback settles their promises on the main thread.
//
// Why a thread of our own rather than Napi::AsyncWorkers on libuv's pool: libuv's 4 threads
// also serve fs, dns, crypto and zlib for the whole process. A pass held one of them for as long
// as it ran (a gpt2-sized full-block prefill can take a second), and every group waiting
// for the model held another, so a few generations in flight stalled the rest of a Node service.
// The engine leaves them alone, at no cost in per-token latency (docs/native-measurements.md).
//
// Lifetime. The Engine is made when the model's weights are loaded and belongs to the model's
// Handle (shared by the JS model and its sessions). Work in flight holds the JS objects that
// asked for it, so the Engine outlives it. close() (the model's dispose) lets the thread end
// and releases the thread-safe function once everything submitted has settled; the destructor
// (the Handle's finalizer, or the environment's teardown) joins the thread, waiting for a pass
// that is still running. Requests hold Napi references, so they are only ever destroyed on the
// main thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "addon.h"  // napi.h, as every file includes it
#include "transformer.h"

namespace microgpt {

struct SessionState {
  PooledKVCache cache;  // taken from the model by the first append, on the engine thread
};

// One request of a group: a whole sequence into a borrowed cache (Model.forward), or new tokens
// appended to a session's cache (append). Made and settled on the main thread.
struct PassEntry {
  Napi::ObjectReference receiver;  // the JS model or session stays alive while work is pending
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference out_ref;   // the logits array the promise resolves to
  Napi::ObjectReference top_ids_ref;  // with top-k asked: where the candidates' ids go (Int32Array)
  std::shared_ptr<SessionState> session;  // null for Model.forward: a scratch cache instead
  std::vector<int> ids;
  ForwardRequest request;
  PooledKVCache scratch_cache;  // Model.forward's, back to the pool when the entry goes
  std::string error;            // why the request failed before its pass (allocation)
  std::function<void(bool)> on_settled;  // runs on the main thread before the promise settles

  PassEntry(Napi::Object receiver_object, Napi::Float32Array out, std::shared_ptr<SessionState> state,
            std::vector<int> token_ids, int start, bool all_positions, std::function<void(bool)> settled);
};

class Engine {
 public:
  // Main thread, once the model is loaded. Throws a JS error if the thread-safe function cannot
  // be made, or the thread started (then with code ERR_INVALID_ARGUMENT: ask for fewer threads).
  explicit Engine(Napi::Env env);
  // Main thread. Joins the thread (after the pass it may be running).
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Main thread: runs the entries' requests on `model`, batched with whatever else is waiting,
  // then settles their promises (in one callback, so sessions stepping together stay together):
  // each with its logits array, or, where top-k candidates came instead (request.top_count > 0),
  // with { values, ids }: views of that array and of top_ids_ref's, top_count long.
  // The event loop stays alive until then.
  void submit(std::shared_ptr<Transformer> model, std::vector<std::unique_ptr<PassEntry>> entries);

  // Main thread: nothing more will be submitted. The thread ends, and the event loop is let go,
  // once what was submitted has settled.
  void close();

 private:
  struct Group {
    std::shared_ptr<Transformer> model;
    std::vector<std::unique_ptr<PassEntry>> entries;
  };
  // What the main thread, the engine thread and the thread-safe function share: the function's
  // finalizer may run after the Engine is gone (environment teardown), so it holds the Core.
  struct Core {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Group> inbox;      // submitted, not yet taken by the thread
    std::deque<Group> done;       // run, not yet settled
    bool stop = false;
    napi_threadsafe_function results = nullptr;  // null once released or finalized (under mutex)

    // Main thread only.
    std::thread thread;
    int pending = 0;          // groups submitted and not yet settled; > 0: the loop is held open
    bool closing = false;     // close() was called

    void loop();
    // The thread-safe function's callback: settles every finished group.
    void settle(Napi::Env env);
    // Stops and joins the thread, releases the thread-safe function, and drops whatever was
    // never settled (environment teardown).
    void shut_down();
  };

  static void run(std::vector<Group>& groups);
  static void call_js(napi_env env, napi_value, void* context, void*);
  static void finalize(napi_env, void* data, void*);

  std::shared_ptr<Core> core_;
  Napi::Env env_;
};

}  // namespace microgpt
