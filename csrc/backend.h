// A backend owns the physical pages of one pool and the virtual reservations of its slots. It is pure
// mechanism: which page goes where is decided by the Pool (pool.h), which also holds the lock; a backend is
// only ever called with that lock held (copiers excepted: they run in loader threads on mapped memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ws {

// Copies into mapped slot memory (host: memcpy/pread; cuda: pinned staging + a stream). One per loader thread.
struct Copier {
  virtual ~Copier() = default;
  virtual void from_buffer(uintptr_t dst, const void* src, uint64_t n) = 0;
  virtual void from_file(uintptr_t dst, int fd, uint64_t file_offset, uint64_t n) = 0;
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
  virtual int dlpack_device_type() const = 0;  // kDLCPU = 1, kDLCUDA = 2
  virtual int device() const { return 0; }

  // A virtual range of n_pages pages, aligned to the page size, with nothing mapped (reads fault).
  virtual uintptr_t reserve(uint64_t n_pages) = 0;
  virtual void release(uintptr_t addr, uint64_t n_pages) = 0;
  // Map pool pages ids[0..n) at addr, addr + page, ... All or nothing: on failure nothing stays mapped.
  // populate: fill page tables now (the loader does this ahead of its copy) rather than on first touch.
  virtual void map(uintptr_t addr, const uint64_t* ids, uint64_t n, bool populate) = 0;
  // Unmap n pages at addr that were mapped by map(); the range stays reserved.
  virtual void unmap(uintptr_t addr, const uint64_t* ids, uint64_t n) = 0;
  // Move mapped pages ids from src to dst (unmapped) without copying; all or nothing.
  virtual void move(uintptr_t src, uintptr_t dst, const uint64_t* ids, uint64_t n) {
    map(dst, ids, n, false);
    try {
      unmap(src, ids, n);
    } catch (...) {
      try {
        unmap(dst, ids, n);
      } catch (...) {
      }
      throw;
    }
  }
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

}  // namespace ws
