#include "cuda_loader.h"

#include <cstdlib>
#include <mutex>
#include <type_traits>

#include "cuda/api.h"

#if defined(_WIN32)
// The CUDA module is built for Linux only (CMakeLists.txt).
#else
#include <dlfcn.h>
#endif

namespace microgpt {

namespace {

#if !defined(_WIN32)
// The folder of the binary this function is in: the addon's, where the build puts the module.
std::string own_folder() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&own_folder), &info) == 0 || info.dli_fname == nullptr) return std::string();
  const std::string path = info.dli_fname;
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}
#endif

CudaStatus probe() {
  CudaStatus s;
#if defined(_WIN32)
  s.reason = "the CUDA engine is built for Linux only";
  return s;
#else
  const char* forced = std::getenv("MICROGPT_CUDA_MODULE");
  const std::string path = forced != nullptr && forced[0] != '\0' ? std::string(forced) : own_folder() + "/microgpt_cuda.so";
  // RTLD_LOCAL: the module's static CUDA runtime stays its own.
  void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (module == nullptr) {
    const char* error = dlerror();
    s.reason = std::string("no CUDA module (") + (error != nullptr ? error : path + ": not found") +
               "); it is built on linux-x64 when nvcc 11.8 or later is found (MICROGPT_CUDA)";
    return s;
  }
  // Never closed: CUDA's runtime registers exit handlers, and the devices are asked once.
  s.module = path;
  auto abi = reinterpret_cast<microgpt_cuda_abi_fn>(dlsym(module, "microgpt_cuda_abi"));
  auto devices = reinterpret_cast<microgpt_cuda_devices_fn>(dlsym(module, "microgpt_cuda_devices"));
  // Every function of the interface, or none: a module of another ABI is not used at all.
  static CudaApi api;  // set once, under cuda_status()'s once_flag
  bool complete = abi != nullptr && devices != nullptr && abi() == MICROGPT_CUDA_ABI;
  auto resolve = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(module, name));
    complete = complete && fn != nullptr;
  };
  if (complete) {
    resolve(api.model_create, "microgpt_cuda_model_create");
    resolve(api.model_free, "microgpt_cuda_model_free");
    resolve(api.cache_create, "microgpt_cuda_cache_create");
    resolve(api.cache_free, "microgpt_cuda_cache_free");
    resolve(api.cache_bytes, "microgpt_cuda_cache_bytes");
    resolve(api.run, "microgpt_cuda_run");
    resolve(api.model_stats, "microgpt_cuda_model_stats");
    resolve(api.test_matmul, "microgpt_cuda_test_matmul");
    resolve(api.test_norm_matmul, "microgpt_cuda_test_norm_matmul");
    resolve(api.test_layernorm, "microgpt_cuda_test_layernorm");
    resolve(api.test_embedding, "microgpt_cuda_test_embedding");
    resolve(api.test_attention, "microgpt_cuda_test_attention");
    resolve(api.test_select, "microgpt_cuda_test_select");
  }
  if (!complete) {
    s.reason = "the CUDA module " + path + " was built for another version of microgpt; rebuild it (npm run build:native)";
    return s;
  }
  constexpr int kMax = 64;
  MicrogptCudaDevice found[kMax];
  char why[512] = {0};
  const int count = devices(found, kMax, why, static_cast<int>(sizeof why));
  if (count < 0) {
    s.reason = why;
    return s;
  }
  for (int i = 0; i < count && i < kMax; i++) {
    CudaDevice d;
    d.name = found[i].name;
    d.memory_bytes = static_cast<double>(found[i].memory_bytes);
    d.major = found[i].major;
    d.minor = found[i].minor;
    d.multiprocessors = found[i].multiprocessors;
    d.usable = found[i].usable != 0;
    s.devices.push_back(d);
  }
  bool any = false;
  for (const CudaDevice& d : s.devices) any = any || d.usable;
  if (!any) {
    s.reason = "no CUDA device of compute capability 8.0 or later (the module's kernels are built for sm_80 and up)";
  } else {
    s.api = &api;
  }
  return s;
#endif
}

}  // namespace

const CudaStatus& cuda_status() {
  static std::once_flag once;
  static CudaStatus* status = nullptr;  // never freed: read until the process ends
  std::call_once(once, [] { status = new CudaStatus(probe()); });
  return *status;
}

std::string cuda_device_problem(int device) {
  const CudaStatus& s = cuda_status();
  if (s.api == nullptr) return s.reason;
  const int count = static_cast<int>(s.devices.size());
  if (device < 0 || device >= count) {
    std::string list;
    for (int i = 0; i < count; i++) list += (i ? "; " : "") + std::to_string(i) + ": " + s.devices[i].name;
    return "there is no CUDA device " + std::to_string(device) + ": this machine has " + std::to_string(count) +
           (count == 1 ? " device (" : " devices (") + list + ")";
  }
  const CudaDevice& d = s.devices[device];
  if (!d.usable) {
    return "CUDA device " + std::to_string(device) + " (" + d.name + ") has compute capability " + std::to_string(d.major) +
           "." + std::to_string(d.minor) + "; the module's kernels need 8.0 or later";
  }
  return std::string();
}

}  // namespace microgpt
