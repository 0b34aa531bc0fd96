/* TEST-ONLY stand-in for libcuda.so.1 (tests/unit/memory/test_cuda_runs.py): the driver calls the cuda backend
 * (csrc/cuda_backend.cpp) makes, on host memory, so its bookkeeping of mapped runs runs on a machine without a GPU.
 * Physical allocations are memfds, reservations PROT_NONE mappings, cuMemMap a MAP_FIXED mapping of the memfd.
 * It enforces the rules of the real driver the backend depends on: cuMemUnmap must name exactly one range one
 * cuMemMap mapped ("the entire contiguous address range that was mapped to"), a range is never mapped twice,
 * cuMemSetAccess needs every page of its range mapped (and only then makes it readable), offsets and sizes are
 * multiples of the granularity, cuMemAddressFree takes exactly a range cuMemAddressReserve returned ("the size
 * must match"; a wrong one is refused and counted). With FAKE_CUDA_NO_OFFSET set it also refuses a non-zero
 * cuMemMap offset with CUDA_ERROR_NOT_SUPPORTED, as an H200 with driver 580 did; fake_cuda_fail_maps(n) makes the
 * next n cuMemMap calls fail (out of memory), fake_cuda_fail_host_registers(n) the next n cuMemHostRegister
 * calls. Never built into warmserve; the test compiles it with cc. */
#define _GNU_SOURCE
#include <cuda.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GRAN (64u << 10)
#define MAX_MAPS 65536
static struct { uintptr_t va; size_t n; } maps[MAX_MAPS];
static int n_maps;
static long n_map_calls, n_unmap_calls, n_access_calls, n_create_calls;
/* Reservations (cuMemAddressReserve), and cuMemAddressFree calls that named no reservation exactly. */
#define MAX_RES 4096
static struct { uintptr_t va; size_t n; } res[MAX_RES];
static int n_res;
static long n_bad_frees;
static int fail_maps, fail_host_registers;
void fake_cuda_fail_maps(int n) { fail_maps = n; }
void fake_cuda_fail_host_registers(int n) { fail_host_registers = n; }
/* Host memory registered with cuMemHostRegister, and host-to-device copies by whether their source lies inside
 * a registered range (a DMA straight from it) or not (from a staging buffer). */
#define MAX_REGS 64
static struct { uintptr_t p; size_t n; } regs[MAX_REGS];
static int n_regs;
static long n_copies_registered, n_copies_other;

long fake_cuda_stat(int which) {
  switch (which) {
    case 0: return n_maps;
    case 1: return n_map_calls;
    case 2: return n_unmap_calls;
    case 3: return n_access_calls;
    case 5: return n_regs;
    case 6: return n_copies_registered;
    case 7: return n_copies_other;
    case 8: return n_res;
    case 9: return n_bad_frees;
    default: return n_create_calls;
  }
}

static int registered(const void* p, size_t n) {
  for (int i = 0; i < n_regs; ++i)
    if ((uintptr_t)p >= regs[i].p && (uintptr_t)p + n <= regs[i].p + regs[i].n) return 1;
  return 0;
}

CUresult cuInit(unsigned f) { (void)f; return CUDA_SUCCESS; }
CUresult cuGetErrorName(CUresult r, const char** s) { *s = r ? "CUDA_ERROR_INVALID_VALUE" : "CUDA_SUCCESS"; return 0; }
CUresult cuGetErrorString(CUresult r, const char** s) { *s = r ? "fake driver: rule broken" : "no error"; return 0; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return CUDA_SUCCESS; }
CUresult cuDeviceGet(CUdevice* d, int o) { *d = o; return CUDA_SUCCESS; }
CUresult cuDevicePrimaryCtxRetain(CUcontext* c, CUdevice d) { (void)d; *c = (CUcontext)0x1; return 0; }
CUresult cuDevicePrimaryCtxRelease(CUdevice d) { (void)d; return CUDA_SUCCESS; }
CUresult cuCtxPushCurrent(CUcontext c) { (void)c; return CUDA_SUCCESS; }
CUresult cuCtxPopCurrent(CUcontext* c) { if (c) *c = (CUcontext)0x1; return CUDA_SUCCESS; }
CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }
CUresult cuMemGetAllocationGranularity(size_t* g, const CUmemAllocationProp* p, CUmemAllocationGranularity_flags f) {
  (void)p, (void)f;
  *g = GRAN;
  return CUDA_SUCCESS;
}
CUresult cuMemGetInfo(size_t* f, size_t* t) { *f = *t = (size_t)1 << 40; return CUDA_SUCCESS; }

CUresult cuMemCreate(CUmemGenericAllocationHandle* h, size_t size, const CUmemAllocationProp* p,
                     unsigned long long flags) {
  (void)p, (void)flags;
  ++n_create_calls;
  if (size == 0 || size % GRAN) return CUDA_ERROR_INVALID_VALUE;
  int fd = memfd_create("fake-cuda", 0);
  if (fd < 0 || ftruncate(fd, (off_t)size) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  *h = (CUmemGenericAllocationHandle)fd;
  return CUDA_SUCCESS;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle h) { close((int)h); return CUDA_SUCCESS; }

CUresult cuMemAddressReserve(CUdeviceptr* p, size_t size, size_t align, CUdeviceptr addr, unsigned long long f) {
  (void)addr, (void)f;
  if (align < GRAN) align = GRAN;
  char* m = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  uintptr_t a = ((uintptr_t)m + align - 1) / align * align;
  if (a > (uintptr_t)m) munmap(m, a - (uintptr_t)m);
  munmap((char*)a + size, (uintptr_t)m + size + align - (a + size));
  if (n_res == MAX_RES) return CUDA_ERROR_OUT_OF_MEMORY;
  res[n_res].va = a, res[n_res].n = size, ++n_res;
  *p = (CUdeviceptr)a;
  return CUDA_SUCCESS;
}
CUresult cuMemAddressFree(CUdeviceptr p, size_t size) {
  for (int i = 0; i < n_res; ++i)
    if (res[i].va == (uintptr_t)p && res[i].n == size) {
      munmap((void*)(uintptr_t)p, size);
      res[i] = res[--n_res];
      return CUDA_SUCCESS;
    }
  ++n_bad_frees;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemMap(CUdeviceptr p, size_t size, size_t off, CUmemGenericAllocationHandle h, unsigned long long f) {
  (void)f;
  ++n_map_calls;
  uintptr_t va = (uintptr_t)p;
  if (!size || size % GRAN || off % GRAN || va % GRAN || n_maps == MAX_MAPS) return CUDA_ERROR_INVALID_VALUE;
  if (off && getenv("FAKE_CUDA_NO_OFFSET")) return CUDA_ERROR_NOT_SUPPORTED;
  if (fail_maps > 0) {
    --fail_maps;
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  off_t end = lseek((int)h, 0, SEEK_END);  /* the allocation's size */
  if (end < 0 || off + size > (size_t)end) return CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < n_maps; ++i)
    if (va < maps[i].va + maps[i].n && maps[i].va < va + size) return CUDA_ERROR_INVALID_VALUE;  // mapped twice
  if (mmap((void*)va, size, PROT_NONE, MAP_SHARED | MAP_FIXED, (int)h, (off_t)off) == MAP_FAILED)
    return CUDA_ERROR_OUT_OF_MEMORY;
  maps[n_maps].va = va, maps[n_maps].n = size, ++n_maps;
  return CUDA_SUCCESS;
}
CUresult cuMemUnmap(CUdeviceptr p, size_t size) {
  ++n_unmap_calls;
  for (int i = 0; i < n_maps; ++i)
    if (maps[i].va == (uintptr_t)p && maps[i].n == size) {  /* exactly one mapping, or nothing */
      mmap((void*)(uintptr_t)p, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
      maps[i] = maps[--n_maps];
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemSetAccess(CUdeviceptr p, size_t size, const CUmemAccessDesc* d, size_t count) {
  (void)d, (void)count;
  ++n_access_calls;
  for (uintptr_t a = (uintptr_t)p; a < (uintptr_t)p + size; a += GRAN) {
    int covered = 0;
    for (int i = 0; i < n_maps && !covered; ++i) covered = a >= maps[i].va && a < maps[i].va + maps[i].n;
    if (!covered) return CUDA_ERROR_INVALID_VALUE;
  }
  return mprotect((void*)(uintptr_t)p, size, PROT_READ | PROT_WRITE) ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
}

CUresult cuStreamCreate(CUstream* s, unsigned f) { (void)f; *s = (CUstream)0x2; return CUDA_SUCCESS; }
CUresult cuStreamDestroy(CUstream s) { (void)s; return CUDA_SUCCESS; }
CUresult cuStreamSynchronize(CUstream s) { (void)s; return CUDA_SUCCESS; }
CUresult cuMemcpyHtoDAsync(CUdeviceptr d, const void* s, size_t n, CUstream st) {
  (void)st;
  if (registered(s, n)) ++n_copies_registered;
  else ++n_copies_other;
  memcpy((void*)(uintptr_t)d, s, n);
  return CUDA_SUCCESS;
}
/* The real driver refuses a range overlapping a registered one; so does this one. */
CUresult cuMemHostRegister(void* p, size_t n, unsigned f) {
  (void)f;
  if (fail_host_registers > 0) {
    --fail_host_registers;
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  for (int i = 0; i < n_regs; ++i)
    if ((uintptr_t)p < regs[i].p + regs[i].n && regs[i].p < (uintptr_t)p + n)
      return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
  if (n_regs == MAX_REGS) return CUDA_ERROR_OUT_OF_MEMORY;
  regs[n_regs].p = (uintptr_t)p, regs[n_regs].n = n, ++n_regs;
  return CUDA_SUCCESS;
}
CUresult cuMemHostUnregister(void* p) {
  for (int i = 0; i < n_regs; ++i)
    if (regs[i].p == (uintptr_t)p) {
      regs[i] = regs[--n_regs];
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}
CUresult cuMemHostAlloc(void** p, size_t n, unsigned f) { (void)f; *p = malloc(n); return *p ? 0 : 2; }
CUresult cuMemFreeHost(void* p) { free(p); return CUDA_SUCCESS; }
CUresult cuEventCreate(CUevent* e, unsigned f) { (void)f; *e = (CUevent)0x3; return CUDA_SUCCESS; }
CUresult cuEventRecord(CUevent e, CUstream s) { (void)e, (void)s; return CUDA_SUCCESS; }
CUresult cuEventSynchronize(CUevent e) { (void)e; return CUDA_SUCCESS; }
CUresult cuEventDestroy(CUevent e) { (void)e; return CUDA_SUCCESS; }
