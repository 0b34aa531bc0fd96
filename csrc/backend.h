// A backend owns the physical pages of one pool and the virtual reservations of its slots. It is pure
// mechanism: which page goes where is decided by the Pool (pool.h), which also holds the lock; a backend is
// only ever called with that lock held (copiers excepted: they run in loader threads on mapped memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ws {

// Copies into mapped slot memory (host: memcpy/pread; cuda: pinned staging + a stream). One per loader thread.
struct Copier {
  virtual ~Copier() = default;
  virtual void from_buffer(uintptr_t dst, const void* src, uint64_t n) = 0;
  virtual void from_file(uintptr_t dst, int fd, uint64_t file_offset, uint64_t n) = 0;
  // src is registered for DMA (cuda_host_register: a host checkpoint cache entry): the cuda copier copies
  // straight from it on its stream, with no staging copy; the host copier does one memcpy.
  virtual void from_pinned(uintptr_t dst, const void* src, uint64_t n) { from_buffer(dst, src, n); }
  virtual void finish() = 0;  // every copy issued so far has landed
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  uint64_t page_bytes() const { return page_bytes_; }
  uint64_t total_pages() const { return total_pages_; }
  virtual bool huge_pages() const { return false; }
  // Host: map/unmap/move carry page tables along (mremap) instead of rebuilding them with page faults.
  virtual bool moves_page_tables() const { return false; }
  // Pages per physical allocation: one cuMemMap can cover a run of pages only inside one allocation (stats).
  virtual uint64_t pages_per_allocation() const { return 1; }
  virtual int dlpack_device_type() const = 0;  // kDLCPU = 1, kDLCUDA = 2
  virtual int device() const { return 0; }

  // A virtual range of n_pages pages, aligned to the page size, with nothing mapped (reads fault).
  virtual uintptr_t reserve(uint64_t n_pages) = 0;
  virtual void release(uintptr_t addr, uint64_t n_pages) = 0;
  // Map pool pages ids[0..n) at addr, addr + page, ... All or nothing: on failure nothing stays mapped.
  // populate: fill page tables now (the loader does this ahead of its copy) rather than on first touch.
  virtual void map(uintptr_t addr, const uint64_t* ids, uint64_t n, bool populate) = 0;
  // Unmap n pages at addr that were mapped by map(); the range stays reserved. On failure either nothing was
  // unmapped, or Error::page_done says which pages were.
  virtual void unmap(uintptr_t addr, const uint64_t* ids, uint64_t n) = 0;
  // Move mapped pages ids from src to dst (unmapped) without copying. On failure either nothing moved, or
  // Error::page_done says which pages now live at dst only (the others are still at src only).
  virtual void move(uintptr_t src, uintptr_t dst, const uint64_t* ids, uint64_t n) = 0;
  // Waits for device work that may still read or write pages about to be unmapped or moved (cuda: queued
  // kernels). Called WITHOUT the pool mutex: a device-wide wait under it would stall every thread of the process.
  // captures: first wait for CUDA graph captures on other threads to end (drain_begin); false where the
  // caller may hold the GIL (a capture on another Python thread needs it: waiting could deadlock, and such a
  // capture then fails and its engine runs eagerly).
  virtual void drain(bool captures = true) { (void)captures; }
  // For close paths, which must go on (a context with a sticky error from a faulted kernel still has to close).
  void drain_quietly(bool captures = true) noexcept {
    try {
      drain(captures);
    } catch (...) {
    }
  }
  // Address ranges of slot reservations that a failed operation left in a state the slot table cannot describe
  // (host: the PROT_NONE fallback freed a range and could not fill it again, so another mmap may own it now; or a
  // rollback could not unmap a range whose pages the pool takes back). The slot must never map there nor release
  // them. Taken (and cleared) by the pool after each operation, with the pool mutex held.
  virtual std::vector<std::pair<uintptr_t, uint64_t>> take_holes() { return {}; }
  // The range (address, pages) an unmap or move of n pages at addr unmaps for a while: the range itself, or more
  // where the driver can only unmap whole mappings (cuda: the runs overlapping it go whole and their other pages
  // are mapped again), so the pool can refuse when a live pinned view sits on one of those other pages.
  virtual std::pair<uintptr_t, uint64_t> cut_extent(uintptr_t addr, uint64_t n) const { return {addr, n}; }
  // Frees a slot's whole reservation, holes included, at its close. Default: around the holes, never over one
  // (host: a hole was freed and another mmap may own it now).
  virtual void release_reservation(uintptr_t addr, uint64_t n_pages,
                                   std::vector<std::pair<uintptr_t, uint64_t>> holes);
  virtual std::unique_ptr<Copier> copier() = 0;
  // Frees the physical pages (after every slot has unmapped); reservations can still be released after.
  virtual void close_pages() = 0;
  // Number of system calls / driver calls issued by map/unmap (stats).
  uint64_t calls = 0;

 protected:
  uint64_t page_bytes_ = 0, total_pages_ = 0;
};

std::unique_ptr<Backend> make_host_backend(uint64_t capacity_bytes, uint64_t page_bytes, bool prefault);
std::unique_ptr<Backend> make_cuda_backend(uint64_t capacity_bytes, uint64_t page_bytes, int device);
bool cuda_compiled();
// Page-locks host memory [ptr, ptr + n) for DMA to cuda device `device` (cuMemHostRegister, PORTABLE: pinned for
// every context of the process; the device's primary context stays retained for the life of the process). The
// memory may be a shared file mapping (the host checkpoint cache in /dev/shm). true: this call registered it and
// the caller unregisters it before unmapping; false: it was registered already. Thread-safe; needs no pool.
// CUDA graph captures under way in this process (engine/graphs.py brackets each one). Synchronizing a context
// while any of its streams captures is invalid whatever the capture mode (CUDA programming guide, "Prohibited and
// unhandled operations": it invalidates the capture), so CudaBackend::drain brackets its synchronize with
// drain_begin (waits until no capture runs; a capture waits in capture_enter until no drain runs) and drain_end.
// On the capturing thread itself drain_begin would wait for itself: it throws there instead.
void capture_enter();
void capture_exit();
void drain_begin(const char* what);
void drain_end();
bool cuda_host_register(uintptr_t ptr, uint64_t n, int device);
void cuda_host_unregister(uintptr_t ptr, int device);

// TEST-ONLY fault injection for the host backend (warmserve._C._debug_fail_after): make the k-th next call of
// op fail as the kernel would (k = 0 disarms). ops: "mmap" (a page run mapped from the memfd), "mremap" (a
// page-table move; it unmaps its destination before it fails, as the kernel can), "protect" (the PROT_NONE mmap
// that restores a reservation; fails with ENOMEM, so the munmap + MAP_FIXED_NOREPLACE fallback runs), "noreplace"
// (a MAP_FIXED_NOREPLACE mmap that fills a freed range again: that fallback's, or the one after a failed mremap,
// as if another thread's mmap had taken the range), "protect_hard" (that PROT_NONE mmap fails with EINVAL: no
// fallback, the range stays mapped). Process-wide; never used outside tests.
void debug_fail_after(const std::string& op, int64_t k);

}  // namespace ws
