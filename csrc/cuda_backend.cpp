// CUDA backend over the driver's virtual memory API. Physical memory is cuMemCreate allocations ("chunks") made
// when the pool is created: 1 GiB each, carved into pages, where the driver maps from inside an allocation (a
// non-zero cuMemMap offset, probed once per pool); else one per page (the driver API documents the offset as
// "currently must be zero", and an H200 with driver 580 refused it). Pool page id i is bytes
// [(i % chunk_pages) * page, +page) of chunk i / chunk_pages. A slot is one cuMemAddressReserve range. map = one
// cuMemMap per run of pages adjacent in one chunk (the pool's free list hands out such runs) plus ONE
// cuMemSetAccess over the whole range (it may span several mappings); fewer driver calls per byte (issue 13).
// A cuMemUnmap range "must be the entire contiguous address range that was mapped to" (driver API docs), so the
// backend records every run it mapped (runs_); unmapping part of a run unmaps all of it and maps the rest again
// at once, its contents intact (the physical pages never leave). The rest of a cut run is thus briefly unmapped:
// no kernel may use those neighbouring pages concurrently with that unmap (the engine launches and unmaps on one
// thread; KV blocks are mapped one map call each, so freeing a block never cuts a run). Measured on an H200,
// driver 580 / CUDA 13.0 (2026-11-28), one allocation per page (the driver refused the offset): per GiB, map +
// one access call 12.1 ms, unmap 7.6 ms. libcuda is opened with dlopen when a cuda pool is first made, so the
// same build imports on machines without a driver.
#include "backend.h"
#include "errors.h"

#ifdef WARMSERVE_WITH_CUDA

#include <cuda.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <utility>

#define WS_STR2(x) #x
#define WS_STR(x) WS_STR2(x)
// The names go through cuda.h's macros, so the versioned symbols (cuMemGetInfo_v2, ...) are looked up.
#define WS_CU_FUNCS(X)                                                                                             \
  X(cuInit) X(cuGetErrorName) X(cuGetErrorString) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDevicePrimaryCtxRetain) \
  X(cuDevicePrimaryCtxRelease) X(cuCtxPushCurrent) X(cuCtxPopCurrent) X(cuCtxSynchronize)                          \
  X(cuMemGetAllocationGranularity) X(cuMemCreate) X(cuMemRelease) X(cuMemAddressReserve) X(cuMemAddressFree)      \
  X(cuMemMap) X(cuMemUnmap) X(cuMemSetAccess) X(cuMemGetInfo) X(cuStreamCreate) X(cuStreamDestroy)                 \
  X(cuStreamSynchronize) X(cuMemcpyHtoDAsync) X(cuMemHostAlloc) X(cuMemFreeHost) X(cuEventCreate)                 \
  X(cuEventRecord) X(cuEventSynchronize) X(cuEventDestroy) X(cuMemHostRegister) X(cuMemHostUnregister)

namespace ws {
namespace {

struct Api {
#define WS_DECL(name) decltype(&name) p_##name = nullptr;
  WS_CU_FUNCS(WS_DECL)
#undef WS_DECL
  std::string load_error;
};

const Api& api() {
  static Api a;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = ::dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = ::dlerror();
      a.load_error = std::string("the NVIDIA driver library libcuda.so.1 cannot be loaded (") + (e ? e : "?") +
                     "): this machine has no NVIDIA driver";
      return;
    }
#define WS_LOAD(name)                                                                      \
  a.p_##name = reinterpret_cast<decltype(&name)>(::dlsym(lib, WS_STR(name)));               \
  if (!a.p_##name && a.load_error.empty())                                                 \
    a.load_error = std::string("libcuda.so.1 has no ") + WS_STR(name) + ": the driver is too old for the " \
                   "virtual memory API (needs CUDA 11.2 or newer)";
    WS_CU_FUNCS(WS_LOAD)
#undef WS_LOAD
  });
  if (!a.load_error.empty()) throw Error(ErrorKind::BackendUnavailable, a.load_error);
  return a;
}

Error cu_error(const char* what, CUresult r) {
  const char* nm = nullptr;
  const char* desc = nullptr;
  const Api& a = api();
  a.p_cuGetErrorName(r, &nm);
  a.p_cuGetErrorString(r, &desc);
  Error e(ErrorKind::Driver, std::string(what) + " failed: " + (nm ? nm : "CUDA_ERROR_?") + " (" +
                                 (desc ? desc : "") + ")");
  e.code = int64_t(r);
  e.name = nm ? nm : "";
  return e;
}

#define WS_CU(call)                                   \
  do {                                                \
    CUresult r_ = (call);                             \
    if (r_ != CUDA_SUCCESS) throw cu_error(#call, r_); \
  } while (0)

// Makes ctx current on this thread for one scope and then restores the caller's context (push/pop, not
// cuCtxSetCurrent): a caller's thread keeps the device it had, so torch on that thread never silently switches to
// the pool's device after a call on a device-1 pool.
struct CtxScope {
  explicit CtxScope(CUcontext ctx) {
    CUresult r = api().p_cuCtxPushCurrent(ctx);
    if (r != CUDA_SUCCESS) throw cu_error("cuCtxPushCurrent", r);
  }
  ~CtxScope() {
    CUcontext popped = nullptr;
    api().p_cuCtxPopCurrent(&popped);
  }
  CtxScope(const CtxScope&) = delete;
  CtxScope& operator=(const CtxScope&) = delete;
};

struct CudaCopier : Copier {
  static constexpr uint64_t kStaging = 16ull << 20;
  CUcontext ctx;
  CUstream stream = nullptr;
  void* staging[2] = {nullptr, nullptr};
  CUevent ev[2] = {nullptr, nullptr};
  bool busy[2] = {false, false};
  int b = 0;

  // Made, used and destroyed by one loader thread: the context is pushed here and popped by the destructor. The
  // pinned staging buffers are allocated on first use: a copier that only copies from registered memory (the host
  // checkpoint cache) never needs them, and cuMemHostAlloc of 2 x 16 MiB per thread is not free.
  explicit CudaCopier(CUcontext c) : ctx(c) {
    const Api& a = api();
    WS_CU(a.p_cuCtxPushCurrent(ctx));
    try {
      WS_CU(a.p_cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    } catch (...) {
      CUcontext popped = nullptr;
      a.p_cuCtxPopCurrent(&popped);
      throw;
    }
  }
  ~CudaCopier() override {
    free_all();
    CUcontext popped = nullptr;
    api().p_cuCtxPopCurrent(&popped);
  }
  void free_all() {
    const Api& a = api();
    if (stream) a.p_cuStreamSynchronize(stream);
    for (int i = 0; i < 2; ++i) {
      if (staging[i]) a.p_cuMemFreeHost(staging[i]);
      if (ev[i]) a.p_cuEventDestroy(ev[i]);
    }
    if (stream) a.p_cuStreamDestroy(stream);
    stream = nullptr;
    staging[0] = staging[1] = nullptr;
    ev[0] = ev[1] = nullptr;
  }
  // Double buffering: fill one pinned buffer while the other one's copy to the device runs.
  template <class Fill>
  void pump(uintptr_t dst, uint64_t n, Fill fill) {
    const Api& a = api();
    uint64_t o = 0;
    for (int i = 0; i < 2; ++i) {  // what a failed first try left half made is freed by free_all() (destructor)
      if (!staging[i]) WS_CU(a.p_cuMemHostAlloc(&staging[i], kStaging, 0));
      if (!ev[i]) WS_CU(a.p_cuEventCreate(&ev[i], CU_EVENT_DISABLE_TIMING));
    }
    while (o < n) {
      uint64_t k = std::min(kStaging, n - o);
      if (busy[b]) WS_CU(a.p_cuEventSynchronize(ev[b]));
      fill(staging[b], o, k);
      WS_CU(a.p_cuMemcpyHtoDAsync(CUdeviceptr(dst + o), staging[b], k, stream));
      WS_CU(a.p_cuEventRecord(ev[b], stream));
      busy[b] = true;
      b ^= 1;
      o += k;
    }
  }
  void from_buffer(uintptr_t dst, const void* src, uint64_t n) override {
    pump(dst, n, [&](void* st, uint64_t o, uint64_t k) { std::memcpy(st, (const char*)src + o, k); });
  }
  void from_file(uintptr_t dst, int fd, uint64_t off, uint64_t n) override {
    pump(dst, n, [&](void* st, uint64_t o, uint64_t k) {
      char* p = (char*)st;
      uint64_t at = off + o;
      while (k) {
        ssize_t r = ::pread(fd, p, k, (off_t)at);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw errno_error("pread", errno);
        if (r == 0) throw invalid("file ended before the end of a source range");
        p += r, at += r, k -= r;
      }
    });
  }
  // Registered host memory: one DMA on this copier's stream, no staging copy. Several loader threads, each with
  // its own stream, keep several copies in flight (the copy engines overlap them).
  void from_pinned(uintptr_t dst, const void* src, uint64_t n) override {
    WS_CU(api().p_cuMemcpyHtoDAsync(CUdeviceptr(dst), src, n, stream));
  }
  void finish() override { WS_CU(api().p_cuStreamSynchronize(stream)); }
};

class CudaBackend : public Backend {
 public:
  CudaBackend(uint64_t capacity, uint64_t page_bytes, int device) : device_(device) {
    const Api& a = api();
    CUresult r = a.p_cuInit(0);
    if (r != CUDA_SUCCESS) {
      Error e = cu_error("cuInit", r);
      throw Error(ErrorKind::BackendUnavailable, "the cuda backend cannot start: " + std::string(e.what()));
    }
    int count = 0;
    WS_CU(a.p_cuDeviceGetCount(&count));
    if (device < 0 || device >= count)
      throw Error(ErrorKind::BackendUnavailable, "cuda device " + std::to_string(device) + " does not exist (" +
                                                     std::to_string(count) + " visible)");
    WS_CU(a.p_cuDeviceGet(&dev_, device));
    WS_CU(a.p_cuDevicePrimaryCtxRetain(&ctx_, dev_));
    try {
      CtxScope c(ctx_);
      init(capacity, page_bytes);
    } catch (...) {  // a throwing constructor runs no destructor: give back what init() took
      close_pages();
      a.p_cuDevicePrimaryCtxRelease(dev_);
      throw;
    }
  }
  // The rest of construction, once the primary context is retained. The pool uses the device's primary context
  // (the one the CUDA runtime, hence torch, uses) so that views are valid in torch's kernels.
  void init(uint64_t capacity, uint64_t page_bytes) {
    const Api& a = api();
    std::memset(&prop_, 0, sizeof prop_);
    prop_.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop_.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop_.location.id = device_;  // a device ordinal, as cuMemCreate and cuMemSetAccess expect
    size_t gran = 0;
    WS_CU(a.p_cuMemGetAllocationGranularity(&gran, &prop_, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    gran_ = gran;
    if (page_bytes == 0 || page_bytes % gran)
      throw invalid("page_bytes=" + std::to_string(page_bytes) + " must be a positive multiple of the device's " +
                    "allocation granularity (" + std::to_string(gran) + " bytes)");
    if (capacity == 0 || capacity % page_bytes)
      throw invalid("capacity_bytes=" + std::to_string(capacity) + " must be a positive multiple of page_bytes=" +
                    std::to_string(page_bytes));
    page_bytes_ = page_bytes;
    total_pages_ = capacity / page_bytes;
    size_t free_b = 0, total_b = 0;
    WS_CU(a.p_cuMemGetInfo(&free_b, &total_b));
    if (capacity > free_b) throw oom(capacity, free_b, total_b);
    std::memset(&access_, 0, sizeof access_);
    access_.location = prop_.location;
    access_.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    chunk_pages_ = std::max<uint64_t>(1, std::min<uint64_t>(total_pages_, kChunkBytes / page_bytes));
    add_chunks(chunk_pages_);  // the first allocation only: the probe maps from it
    if (chunk_pages_ > 1 && !offset_map_works()) {
      // The driver API documents cuMemMap's offset as "currently must be zero", and an H200 with driver 580 /
      // CUDA 13.0 answers CUDA_ERROR_NOT_SUPPORTED (measured, 2026-11-28): one allocation per page, as before.
      close_pages();
      chunk_pages_ = 1;
    }
    add_chunks(total_pages_);
  }
  // Allocations of chunk_pages_ pages each (the last one may be shorter) until they hold the first `upto` pages.
  void add_chunks(uint64_t upto) {
    const Api& a = api();
    chunks_.reserve((total_pages_ + chunk_pages_ - 1) / chunk_pages_);
    for (uint64_t i = chunks_.size() * chunk_pages_; i < upto; i += chunk_pages_) {
      CUmemGenericAllocationHandle h;
      CUresult cr = a.p_cuMemCreate(&h, std::min(chunk_pages_, total_pages_ - i) * page_bytes_, &prop_, 0);
      if (cr != CUDA_SUCCESS) {
        close_pages();
        size_t free_b = 0, total_b = 0;
        a.p_cuMemGetInfo(&free_b, &total_b);
        if (cr == CUDA_ERROR_OUT_OF_MEMORY) throw oom(total_pages_ * page_bytes_, free_b, total_b);
        throw cu_error("cuMemCreate", cr);
      }
      chunks_.push_back(h);
    }
  }
  // Whether this driver maps a page from inside an allocation (a non-zero cuMemMap offset): one probe mapping.
  bool offset_map_works() {
    const Api& a = api();
    CUdeviceptr p = 0;
    if (a.p_cuMemAddressReserve(&p, page_bytes_, 0, 0, 0) != CUDA_SUCCESS) return false;
    bool ok = a.p_cuMemMap(p, page_bytes_, page_bytes_, chunks_[0], 0) == CUDA_SUCCESS;
    if (ok) ok = a.p_cuMemUnmap(p, page_bytes_) == CUDA_SUCCESS;
    a.p_cuMemAddressFree(p, page_bytes_);
    return ok;
  }
  // The Pool outlives its slots (each holds it), so every reservation is freed before the context goes.
  ~CudaBackend() override {
    close_pages();
    if (ctx_) api().p_cuDevicePrimaryCtxRelease(dev_);
  }

  std::string name() const override { return "cuda"; }
  uint64_t pages_per_allocation() const override { return chunk_pages_; }
  int dlpack_device_type() const override { return 2; }
  int device() const override { return device_; }

  uintptr_t reserve(uint64_t n_pages) override {
    const Api& a = api();
    CtxScope c(ctx_);
    CUdeviceptr p = 0;
    // Alignment must be a power of two: the page size when it is one (2 MiB), else the granularity.
    uint64_t align = (page_bytes_ & (page_bytes_ - 1)) == 0 ? page_bytes_ : gran_;
    WS_CU(a.p_cuMemAddressReserve(&p, n_pages * page_bytes_, align, 0, 0));
    return uintptr_t(p);
  }
  void release(uintptr_t addr, uint64_t n_pages) override {
    const Api& a = api();
    CtxScope c(ctx_);
    a.p_cuMemAddressFree(CUdeviceptr(addr), n_pages * page_bytes_);
  }

  void map(uintptr_t addr, const uint64_t* ids, uint64_t n, bool) override {
    const Api& a = api();
    CtxScope c(ctx_);
    std::vector<uintptr_t> mapped;  // runs mapped so far (rolled back on failure)
    CUresult r = CUDA_SUCCESS;
    const char* what = "cuMemMap";
    for (uint64_t i = 0; i < n;) {
      uint64_t j = i + 1;
      while (j < n && ids[j] == ids[j - 1] + 1 && ids[j] % chunk_pages_ != 0) ++j;  // adjacent, same chunk
      r = map_run(addr + i * page_bytes_, ids[i], j - i);
      if (r != CUDA_SUCCESS) break;
      mapped.push_back(addr + i * page_bytes_);
      i = j;
    }
    if (r == CUDA_SUCCESS) {
      ++calls;
      what = "cuMemSetAccess";
      r = a.p_cuMemSetAccess(CUdeviceptr(addr), n * page_bytes_, &access_, 1);  // one call for the whole range
      if (r == CUDA_SUCCESS) return;
    }
    // A run that cannot be unmapped again still maps pages the pool takes back (they would show through two
    // slots): a hole, so the slot is refused from now on (found in review: the result was ignored).
    for (uintptr_t va : mapped) {
      const uint64_t len = runs_.at(va).n * page_bytes_;
      if (unmap_run(va) != CUDA_SUCCESS) holes_.emplace_back(va, len);
    }
    if (r == CUDA_ERROR_OUT_OF_MEMORY) {  // the pages exist already: this is the driver's own memory running out
      size_t free_b = 0, total_b = 0;
      a.p_cuMemGetInfo(&free_b, &total_b);
      throw oom(n * page_bytes_, free_b, total_b);
    }
    throw cu_error(what, r);
  }

  // cuMemUnmap/cuMemRelease do not wait for kernels still using the range (a kernel that touches it after the
  // unmap faults, and the fault kills the context), so the pool calls drain() first, outside its mutex: torch
  // drops a tensor while the kernels that use it may still be queued.
  void drain(bool captures) override {
    struct Bracket {  // drain_begin ... drain_end around the synchronize, also when it throws
      bool on;
      ~Bracket() {
        if (on) drain_end();
      }
    } bracket{false};
    if (captures) {
      drain_begin("drain before an unmap or a move");  // outside the pool mutex, like drain itself
      bracket.on = true;
    }
    CtxScope c(ctx_);
    WS_CU(api().p_cuCtxSynchronize());
  }
  void unmap(uintptr_t addr, const uint64_t*, uint64_t n) override {
    CtxScope c(ctx_);
    std::vector<uint8_t> done;
    CUresult r = unmap_range(addr, n, done);
    if (r != CUDA_SUCCESS) throw partial(cu_error("cuMemUnmap", r), done);
  }
  // map at dst, then unmap at src: a handle may be mapped at several addresses at once, so the physical pages
  // (and their contents) never leave. A page whose src unmap failed is unmapped at dst again (it stays at src);
  // a page whose src unmap succeeded stays at dst: page_done tells the pool which pages moved.
  void move(uintptr_t src, uintptr_t dst, const uint64_t* ids, uint64_t n) override {
    CtxScope c(ctx_);
    map(dst, ids, n, false);
    std::vector<uint8_t> done;
    CUresult r = unmap_range(src, n, done);
    if (r == CUDA_SUCCESS) return;
    std::vector<uint8_t> undone;  // dst pages whose src unmap failed go again (their runs' other pages stay)
    for (uint64_t k = 0; k < n;) {
      uint64_t j = k;
      while (j < n && !done[j]) ++j;
      // A dst page that stays mapped is also at src, where the table keeps it: a hole (as in map's rollback).
      if (j > k && unmap_range(dst + k * page_bytes_, j - k, undone) != CUDA_SUCCESS)
        for (uint64_t q = 0; q < j - k; ++q)
          if (!undone[q]) holes_.emplace_back(dst + (k + q) * page_bytes_, page_bytes_);
      k = j + 1;
    }
    throw partial(cu_error("cuMemUnmap", r), done);
  }

  std::unique_ptr<Copier> copier() override { return std::make_unique<CudaCopier>(ctx_); }

  // One cuMemMap of n pages adjacent in one chunk (pool pages first..first+n-1) at va, recorded in runs_.
  CUresult map_run(uintptr_t va, uint64_t first, uint64_t n) {
    ++calls;
    CUresult r = api().p_cuMemMap(CUdeviceptr(va), n * page_bytes_, (first % chunk_pages_) * page_bytes_,
                                  chunks_[first / chunk_pages_], 0);
    if (r == CUDA_SUCCESS) runs_[va] = Run{n, first};
    return r;
  }
  CUresult unmap_run(uintptr_t va) {
    ++calls;
    CUresult r = api().p_cuMemUnmap(CUdeviceptr(va), runs_.at(va).n * page_bytes_);
    if (r == CUDA_SUCCESS) runs_.erase(va);
    return r;
  }
  // The first run that ends past addr: the one covering addr, else the first after it (runs_.end(): none).
  // Iterating on from it stays valid while unmap_run erases the runs passed (std::map keeps other iterators).
  auto first_run_over(uintptr_t addr) const {  // a const_iterator of runs_
    auto it = runs_.upper_bound(addr);
    if (it != runs_.begin() && std::prev(it)->first + std::prev(it)->second.n * page_bytes_ > addr) --it;
    return it;
  }
  // Unmaps pages [addr, addr + n pages): every run overlapping it goes whole (cuMemUnmap cannot cut a mapping)
  // and the parts of those runs outside the range are mapped again. Every run is tried; done[k] says which
  // pages went (a page no run covers is not mapped: done); the first error is returned. A part that cannot be
  // mapped again is a hole (take_holes): the slot's table would say mapped where nothing is.
  CUresult unmap_range(uintptr_t addr, uint64_t n, std::vector<uint8_t>& done) {
    const uintptr_t end = addr + n * page_bytes_;
    done.assign(n, 1);
    auto it = first_run_over(addr);
    CUresult first_err = CUDA_SUCCESS;
    while (it != runs_.end() && it->first < end) {
      const uintptr_t va = it->first;
      const Run run = it->second;
      const uintptr_t run_end = va + run.n * page_bytes_;
      ++it;  // before unmap_run erases va (std::map iterators to other entries stay valid)
      CUresult r = unmap_run(va);
      if (r != CUDA_SUCCESS) {
        for (uintptr_t p = std::max(va, addr); p < std::min(run_end, end); p += page_bytes_)
          done[(p - addr) / page_bytes_] = 0;
        if (first_err == CUDA_SUCCESS) first_err = r;
        continue;
      }
      if (va < addr) remap(va, run.first, (addr - va) / page_bytes_);
      if (run_end > end) remap(end, run.first + (end - va) / page_bytes_, (run_end - end) / page_bytes_);
    }
    return first_err;
  }
  void remap(uintptr_t va, uint64_t first, uint64_t n) {
    CUresult r = map_run(va, first, n);
    if (r == CUDA_SUCCESS) {
      ++calls;
      r = api().p_cuMemSetAccess(CUdeviceptr(va), n * page_bytes_, &access_, 1);
      if (r != CUDA_SUCCESS) unmap_run(va);
    }
    if (r != CUDA_SUCCESS) holes_.emplace_back(va, n * page_bytes_);
  }
  std::vector<std::pair<uintptr_t, uint64_t>> take_holes() override { return std::exchange(holes_, {}); }
  // cuMemAddressFree takes exactly what cuMemAddressReserve returned ("the size must match"), so the reservation
  // goes in one call; a hole in it is reserved, unmapped space that nothing else can own.
  void release_reservation(uintptr_t addr, uint64_t n_pages, std::vector<std::pair<uintptr_t, uint64_t>>) override {
    release(addr, n_pages);
  }
  std::pair<uintptr_t, uint64_t> cut_extent(uintptr_t addr, uint64_t n) const override {
    const uintptr_t end = addr + n * page_bytes_;
    uintptr_t lo = addr, hi = end;
    for (auto it = first_run_over(addr); it != runs_.end() && it->first < end; ++it) {
      lo = std::min(lo, it->first);
      hi = std::max(hi, it->first + it->second.n * page_bytes_);
    }
    return {lo, (hi - lo) / page_bytes_};
  }

  void close_pages() override {
    if (chunks_.empty()) return;
    const Api& a = api();
    CUresult pushed = a.p_cuCtxPushCurrent(ctx_);  // no throwing here: destructors call this
    for (auto h : chunks_) a.p_cuMemRelease(h);  // memory still mapped somewhere is freed when unmapped
    CUcontext popped = nullptr;
    if (pushed == CUDA_SUCCESS) a.p_cuCtxPopCurrent(&popped);
    chunks_.clear();
  }

 private:
  static Error partial(Error e, const std::vector<uint8_t>& done) {
    for (uint8_t d : done)
      if (d) {
        e.page_done = done;
        break;
      }
    return e;
  }
  Error oom(uint64_t asked, uint64_t free_b, uint64_t total_b) const {
    Error e(ErrorKind::OutOfMemory, "cuda device " + std::to_string(device_) + ": asked for " + fmt_bytes(asked) +
                                        ", " + fmt_bytes(free_b) + " of " + fmt_bytes(total_b) +
                                        " free. Fix: lower capacity_bytes, or stop other processes on this GPU");
    e.asked_bytes = asked, e.free_bytes = free_b, e.total_bytes = total_b;
    return e;
  }
  int device_;
  uint64_t gran_ = 0;
  CUdevice dev_ = 0;
  CUcontext ctx_ = nullptr;
  CUmemAllocationProp prop_;
  CUmemAccessDesc access_;
  // Physical chunk size: large enough that a 1 GiB move is one or two cuMemMap calls, small enough that a pool
  // is not one allocation the driver must find contiguous room for.
  static constexpr uint64_t kChunkBytes = 1ull << 30;
  struct Run {
    uint64_t n, first;  // pages, first pool page id
  };
  uint64_t chunk_pages_ = 1;
  std::vector<CUmemGenericAllocationHandle> chunks_;
  std::map<uintptr_t, Run> runs_;  // every mapping, by address (guarded by the pool mutex, like every map call)
  std::vector<std::pair<uintptr_t, uint64_t>> holes_;
};

// The primary context of `device`, retained once for the life of the process (registrations made in it must
// outlive any one pool).
CUcontext host_register_ctx(int device) {
  static std::mutex mu;
  static std::map<int, CUcontext> ctxs;
  std::lock_guard<std::mutex> g(mu);
  auto it = ctxs.find(device);
  if (it != ctxs.end()) return it->second;
  const Api& a = api();
  CUresult r = a.p_cuInit(0);
  if (r != CUDA_SUCCESS) throw Error(ErrorKind::BackendUnavailable, std::string(cu_error("cuInit", r).what()));
  CUdevice dev;
  WS_CU(a.p_cuDeviceGet(&dev, device));
  CUcontext ctx = nullptr;
  WS_CU(a.p_cuDevicePrimaryCtxRetain(&ctx, dev));
  return ctxs[device] = ctx;
}

}  // namespace

bool cuda_host_register(uintptr_t ptr, uint64_t n, int device) {
  CtxScope c(host_register_ctx(device));
  CUresult r = api().p_cuMemHostRegister((void*)ptr, n, CU_MEMHOSTREGISTER_PORTABLE);
  if (r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED) return false;
  if (r != CUDA_SUCCESS) throw cu_error("cuMemHostRegister", r);
  return true;
}

void cuda_host_unregister(uintptr_t ptr, int device) {
  CtxScope c(host_register_ctx(device));
  CUresult r = api().p_cuMemHostUnregister((void*)ptr);
  if (r != CUDA_SUCCESS && r != CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED) throw cu_error("cuMemHostUnregister", r);
}

bool cuda_compiled() { return true; }
std::unique_ptr<Backend> make_cuda_backend(uint64_t capacity_bytes, uint64_t page_bytes, int device) {
  return std::make_unique<CudaBackend>(capacity_bytes, page_bytes, device);
}

}  // namespace ws

#else  // built without the CUDA toolkit

namespace ws {
bool cuda_compiled() { return false; }
bool cuda_host_register(uintptr_t, uint64_t, int) {
  throw Error(ErrorKind::BackendUnavailable,
              "this build of warmserve has no cuda backend: host memory cannot be registered for DMA. Fix: install "
              "the CUDA toolkit (or set CUDA_HOME) and reinstall warmserve, or use the host backend");
}
void cuda_host_unregister(uintptr_t, int) {}
std::unique_ptr<Backend> make_cuda_backend(uint64_t, uint64_t, int) {
  throw Error(ErrorKind::BackendUnavailable,
              "this build of warmserve has no cuda backend: cuda.h was not found when it was built. Fix: install "
              "the CUDA toolkit (or set CUDA_HOME) and reinstall warmserve, or use backend='host'");
}
}  // namespace ws

#endif
