// Host backend: every page of a pool is an offset in ONE memfd, so a run of adjacent pages maps with one mmap
// and neighbouring runs merge into one kernel mapping (vm.max_map_count is 65,530 by default: about 32,000
// separately mapped pages per process). A slot is a PROT_NONE reservation: reading an unmapped page faults
// cleanly instead of returning stale data. Unmap maps PROT_NONE anonymous memory back over the range, which
// keeps the reservation (munmap would free the address range for anyone).
//
// Pages are committed when the pool is made (fallocate): a pool that cannot exist fails at creation with the
// numbers, instead of SIGBUS inside a later copy when tmpfs runs out; and it matches the GPU backend, where
// cuMemCreate allocates every page up front. After that, map/unmap only edit page tables.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <fstream>
#include <thread>
#include <vector>
#include <string>

#include "backend.h"
#include "cgroup_memory.h"
#include "errors.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

namespace ws {
namespace {

// Test-only fault injection (backend.h): countdown per op; the call that brings it from 1 to 0 fails.
enum Fault { kFaultMmap, kFaultMremap, kFaultProtect, kFaultNoreplace, kFaultProtectHard, kFaults };
std::atomic<int64_t> g_fail_after[kFaults];

bool injected(Fault f) {
  int64_t v = g_fail_after[f].load(std::memory_order_relaxed);
  while (v > 0)
    if (g_fail_after[f].compare_exchange_weak(v, v - 1)) return v == 1;
  return false;
}

uint64_t meminfo_kib(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string k;
  uint64_t v = 0;
  std::string unit;
  while (f >> k >> v) {
    std::getline(f, unit);
    if (k == std::string(key) + ":") return v;
  }
  return 0;
}

int64_t count_mappings() {
  std::ifstream f("/proc/self/maps");
  int64_t n = 0;
  std::string line;
  while (std::getline(f, line)) ++n;
  return n;
}

int64_t max_mappings() {
  std::ifstream f("/proc/sys/vm/max_map_count");
  int64_t v = 65530;
  f >> v;
  return v;
}

// mmap failed with ENOMEM: the mapping limit, the address-space limit (RLIMIT_AS: checked where `less` names the
// smaller request that fits, for a slot's reservation and a pool's park), or (rarely) kernel memory. Tell which,
// with numbers (found in review: under `ulimit -v` create_slot blamed the 128 TiB address space).
Error mmap_error(const char* what, int err, uint64_t bytes, const char* less = nullptr) {
  uint64_t as_limit = err == ENOMEM && less ? soft_limit(RLIMIT_AS) : 0, vm = as_limit ? vm_size_bytes() : 0;
  // reserve_aligned asks 2 MiB more than `bytes`
  if (as_limit && (!vm || vm + bytes + (2ull << 20) > as_limit) && count_mappings() + 16 < max_mappings()) {
    Error e(ErrorKind::OutOfMemory, std::string(what) + " of " + fmt_bytes(bytes) + ": ENOMEM");
    e.asked_bytes = bytes, e.free_bytes = as_limit > vm ? as_limit - vm : 0, e.total_bytes = as_limit;
    return limit_error(e, "RLIMIT_AS", as_limit, "the process's address-space limit RLIMIT_AS is " +
                       fmt_bytes(as_limit) + (vm ? " and its virtual size (VmSize) already " + fmt_bytes(vm) : "") +
                       ", too little for " + fmt_bytes(bytes) + " more", "ulimit -v unlimited",
                       std::string(", or ") + less);
  }
  if (err == ENOMEM) {
    int64_t have = count_mappings(), limit = max_mappings();
    if (have + 16 >= limit) {
      Error e(ErrorKind::MappingLimit,
              std::string(what) + " of " + fmt_bytes(bytes) + " needs more kernel memory mappings: the process has " +
                  std::to_string(have) + " of vm.max_map_count=" + std::to_string(limit) +
                  ". Fix: map adjacent pages together (fewer, longer runs), use larger page_bytes, or raise the "
                  "limit (sysctl -w vm.max_map_count=262144)");
      e.asked_bytes = bytes;
      e.mappings = have;
      e.max_mappings = limit;
      return e;
    }
  }
  return errno_error(std::string(what) + " of " + fmt_bytes(bytes), err);
}

// A call on the pool's memfd failed: past RLIMIT_FSIZE (EFBIG) or RLIMIT_NOFILE (EMFILE), the limit, its value
// and the fix (found in review: a bare "ftruncate: EFBIG" and "memfd_create: EMFILE"); else the errno.
Error memfd_error(const char* what, int err, uint64_t capacity) {
  Error e = errno_error(std::string(what) + " for a host page pool of " + fmt_bytes(capacity), err);
  if (uint64_t fsize = err == EFBIG ? soft_limit(RLIMIT_FSIZE) : 0) {
    e.kind = ErrorKind::OutOfMemory;
    e.asked_bytes = capacity, e.free_bytes = fsize, e.total_bytes = fsize;
    return limit_error(e, "RLIMIT_FSIZE", fsize, "the pool is one file, and the process's file-size limit "
                       "RLIMIT_FSIZE is " + fmt_bytes(fsize), "ulimit -f unlimited",
                       ", or make a smaller pool (capacity_bytes at most " + fmt_bytes(fsize) + ")");
  }
  if (uint64_t nofile = err == EMFILE ? soft_limit(RLIMIT_NOFILE) : 0)
    return limit_error(e, "RLIMIT_NOFILE", nofile, "the process has all the " + std::to_string(nofile) +
                       " file descriptors its limit RLIMIT_NOFILE allows open", "ulimit -n 65536",
                       ", or close files the process no longer needs");
  return e;
}

struct HostCopier : Copier {
  void from_buffer(uintptr_t dst, const void* src, uint64_t n) override { std::memcpy((void*)dst, src, n); }
  void from_file(uintptr_t dst, int fd, uint64_t off, uint64_t n) override {
    char* p = (char*)dst;
    while (n) {
      ssize_t r = ::pread(fd, p, n, (off_t)off);
      if (r < 0) {
        if (errno == EINTR) continue;
        throw errno_error("pread", errno);
      }
      if (r == 0) throw invalid("file ended " + std::to_string(n) + " bytes before the end of a source range");
      p += r, off += r, n -= r;
    }
  }
  void finish() override {}
};

class HostBackend : public Backend {
 public:
  HostBackend(uint64_t capacity, uint64_t page_bytes, bool prefault) {
    long sys_page = sysconf(_SC_PAGESIZE);
    if (page_bytes == 0 || page_bytes % sys_page)
      throw invalid("page_bytes=" + std::to_string(page_bytes) + " must be a positive multiple of the system page (" +
                    std::to_string(sys_page) + " bytes)");
    if (capacity == 0 || capacity % page_bytes)
      throw invalid("capacity_bytes=" + std::to_string(capacity) + " must be a positive multiple of page_bytes=" +
                    std::to_string(page_bytes));
    page_bytes_ = page_bytes;
    total_pages_ = capacity / page_bytes;
    const uint64_t huge = 2ull << 20;
    // Huge pages only when the kernel has enough reserved and free. Asking fallocate first is not enough: with
    // surplus huge pages allowed (nr_overcommit_hugepages) it tries to take them one by one from normal memory,
    // which for an oversized pool stalls the machine instead of failing.
    const uint64_t huge_free = meminfo_kib("HugePages_Free") * meminfo_kib("Hugepagesize") * 1024;
    if (page_bytes % huge == 0 && meminfo_kib("Hugepagesize") * 1024 == huge && capacity <= huge_free) {
      int fd = memfd_create("warmserve-pool-huge", MFD_CLOEXEC | MFD_HUGETLB | MFD_HUGE_2MB);
      if (fd >= 0) {
        if (::ftruncate(fd, (off_t)capacity) == 0 && ::fallocate(fd, 0, 0, (off_t)capacity) == 0) {
          fd_ = fd;
          huge_ = true;
        } else {
          ::close(fd);
        }
      }
    }
    if (fd_ < 0) {
      // tmpfs fallocate does not check the memory it is about to take: asking for more than is available would
      // end in the OOM killer, so refuse with the numbers first.
      uint64_t avail = meminfo_kib("MemAvailable") * 1024, total = meminfo_kib("MemTotal") * 1024;
      if (avail && capacity > avail) {
        Error e(ErrorKind::OutOfMemory, "host page pool needs " + fmt_bytes(capacity) + ", " + fmt_bytes(avail) +
                                            " of " + fmt_bytes(total) +
                                            " host memory available: lower capacity_bytes or free host memory");
        e.asked_bytes = capacity, e.free_bytes = avail, e.total_bytes = total;
        throw e;
      }
      // The same for a container's memory limit, which MemAvailable does not show: there the group's OOM killer
      // answers the fallocate with SIGKILL (cgroup_memory.h).
      CgroupMemory cg = cgroup_memory();
      if (cg.limit_bytes && capacity > cg.room_bytes) {
        Error e(ErrorKind::OutOfMemory, "host page pool needs " + fmt_bytes(capacity) + ", " +
                                            fmt_bytes(cg.room_bytes) + " left under this process's memory cgroup "
                                            "limit of " + fmt_bytes(cg.limit_bytes) + " (" + cg.file +
                                            "): lower capacity_bytes, free memory in the container, or raise its "
                                            "memory limit");
        e.asked_bytes = capacity, e.free_bytes = cg.room_bytes, e.total_bytes = cg.limit_bytes;
        e.limit = "cgroup memory", e.limit_value = cg.limit_bytes;
        throw e;
      }
      fd_ = memfd_create("warmserve-pool", MFD_CLOEXEC);
      if (fd_ < 0) throw memfd_error("memfd_create", errno, capacity);
      if (::ftruncate(fd_, (off_t)capacity) != 0) {
        int err = errno;
        ::close(fd_);
        throw memfd_error("ftruncate", err, capacity);
      }
      if (::fallocate(fd_, 0, 0, (off_t)capacity) != 0) {
        int err = errno;
        ::close(fd_);
        uint64_t avail = meminfo_kib("MemAvailable") * 1024, total = meminfo_kib("MemTotal") * 1024;
        if (err == EFBIG) throw memfd_error("fallocate", err, capacity);
        if (err == ENOSPC || err == ENOMEM) {
          Error e(ErrorKind::OutOfMemory, "host page pool needs " + fmt_bytes(capacity) + ", " + fmt_bytes(avail) +
                                              " of " + fmt_bytes(total) +
                                              " host memory available: lower capacity_bytes or free host memory");
          e.asked_bytes = capacity, e.free_bytes = avail, e.total_bytes = total;
          throw e;
        }
        throw errno_error("fallocate of " + fmt_bytes(capacity), err);
      }
    }
    // WARMSERVE_HOST_NO_MREMAP=1 forces the fallback path (mmap from the memfd), so tests cover both.
    remap_ok_ = std::getenv("WARMSERVE_HOST_NO_MREMAP") == nullptr;
    try {
      make_park(prefault);
    } catch (...) {
      close_pages();
      throw;
    }
  }
  ~HostBackend() override { close_pages(); }

  std::string name() const override { return "host"; }
  bool huge_pages() const override { return huge_; }
  bool moves_page_tables() const override { return remap_ok_; }
  int dlpack_device_type() const override { return 1; }

  uintptr_t reserve(uint64_t n_pages) override {
    uint64_t bytes = n_pages * page_bytes_;
    uintptr_t a = reserve_aligned(bytes);
    if (a) return a;
    int err = errno;
    Error e = mmap_error("reserving a slot", err, bytes, "reserve less (reserve_bytes: what the slot can use)");
    // ENOMEM with mappings to spare: no free range of addresses that long (create_slot says so, with the fix)
    if (err == ENOMEM && e.kind == ErrorKind::Driver) {
      e.kind = ErrorKind::OutOfMemory;
      e.asked_bytes = bytes;
    }
    throw e;
  }

  void release(uintptr_t addr, uint64_t n_pages) override { ::munmap((void*)addr, n_pages * page_bytes_); }

  void map(uintptr_t addr, const uint64_t* ids, uint64_t n, bool populate) override {
    uint64_t i = 0;
    while (i < n) {
      uint64_t j = run_end(ids, i, n);
      uintptr_t dst = addr + i * page_bytes_;
      uint64_t len = (j - i) * page_bytes_;
      // From the park: page tables travel with the pages, so the slot needs no page faults.
      Remap r = remap(park_ + ids[i] * page_bytes_, dst, len);
      bool ok = r == Remap::Moved;
      // A failed mremap may have unmapped dst: made PROT_NONE again first, so the MAP_FIXED below only ever lands
      // on this slot's own reservation. settle() false: a hole now (recorded), never touched again.
      bool ours = ok || r == Remap::Skipped || settle(dst, len);
      if (!ok && ours) ok = map_from_fd(dst, len, ids[i], populate);
      if (!ok) {
        int err = errno;
        // The failed run's own range (a failed mmap leaves it as it was: the kernel checks the mapping count
        // before it touches the range).
        if (ours) protect_none(dst, len);
        if (i) {  // all or nothing
          try {
            unmap(addr, ids, i);
          } catch (const Error&) {  // still mapped, though the pool takes the pages back
            untrust(addr, i * page_bytes_);
          }
        }
        throw mmap_error("mapping", err, (n - i) * page_bytes_);
      }
      i = j;
    }
  }

  void unmap(uintptr_t addr, const uint64_t* ids, uint64_t n) override {
    // Back to the park with their page tables (no zapping, no faults on the next map); whatever fails to move is
    // simply dropped by the PROT_NONE below, its contents stay in the memfd.
    for (uint64_t i = 0; i < n;) {
      uint64_t j = run_end(ids, i, n);
      uintptr_t to = park_ + ids[i] * page_bytes_;
      if (remap(addr + i * page_bytes_, to, (j - i) * page_bytes_) == Remap::Failed)
        restore_park(to, (j - i) * page_bytes_, ids[i]);
      i = j;
    }
    // A hole (the range got unreserved) still means unmapped: the pages are no longer in the slot.
    if (protect_none(addr, n * page_bytes_) == Prot::Failed) throw mmap_error("unmapping", errno, n * page_bytes_);
  }

  void move(uintptr_t src, uintptr_t dst, const uint64_t* ids, uint64_t n) override {
    for (uint64_t i = 0; i < n;) {
      uint64_t j = run_end(ids, i, n);
      uintptr_t s = src + i * page_bytes_, d = dst + i * page_bytes_;
      uint64_t len = (j - i) * page_bytes_;
      Remap r = remap(s, d, len);
      bool ok = r == Remap::Moved;
      bool ours = ok || r == Remap::Skipped || settle(d, len);  // as in map()
      if (!ok && ours) ok = map_from_fd(d, len, ids[i], false);
      if (!ok) {  // the source is still mapped (remap keeps it): only the destination needs undoing
        int err = errno;
        if (ours) protect_none(d, len);  // the failed run's own range, as in map()
        if (i) untrust_unless(protect_none(dst, i * page_bytes_), dst, i * page_bytes_);  // runs moved before it
        throw mmap_error("moving", err, n * page_bytes_);
      }
      i = j;
    }
    if (protect_none(src, n * page_bytes_) == Prot::Failed) {
      int err = errno;
      untrust_unless(protect_none(dst, n * page_bytes_), dst, n * page_bytes_);
      throw mmap_error("moving", err, n * page_bytes_);
    }
  }

  std::unique_ptr<Copier> copier() override { return std::make_unique<HostCopier>(); }

  std::vector<std::pair<uintptr_t, uint64_t>> take_holes() override { return std::move(holes_); }

  void close_pages() override {
    if (park_) {  // around the park's holes (restore_park): another mmap may own them now
      std::sort(park_holes_.begin(), park_holes_.end());
      uintptr_t at = park_, end = park_ + total_pages_ * page_bytes_;
      for (auto& [a, len] : park_holes_) {
        if (a > at) ::munmap((void*)at, a - at);
        at = std::max<uintptr_t>(at, a + len);
      }
      if (end > at) ::munmap((void*)at, end - at);
    }
    park_holes_.clear();
    park_ = 0;
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  uint64_t run_end(const uint64_t* ids, uint64_t i, uint64_t n) const {
    uint64_t j = i + 1;
    while (j < n && ids[j] == ids[j - 1] + 1) ++j;  // one call per run of adjacent memfd pages
    return j;
  }

  // 2 MiB-aligned PROT_NONE range: hugetlb needs it, and mremap moves whole page-table pages between aligned
  // ranges instead of entry by entry.
  static uintptr_t reserve_aligned(uint64_t bytes) {
    const uint64_t align = 2ull << 20;
    void* p = ::mmap(nullptr, bytes + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return 0;
    uintptr_t a = (uintptr_t)p, aligned = (a + align - 1) & ~(align - 1);
    if (aligned > a) ::munmap((void*)a, aligned - a);
    uintptr_t end = a + bytes + align, aend = aligned + bytes;
    if (end > aend) ::munmap((void*)aend, end - aend);
    return aligned;
  }

  // Only over a range this backend owns (a reservation, or the park): MAP_FIXED replaces whatever is there.
  bool map_from_fd(uintptr_t dst, uint64_t len, uint64_t first_id, bool populate) {
    ++calls;
    if (injected(kFaultMmap)) return errno = ENOMEM, false;
    return ::mmap((void*)dst, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | (populate ? MAP_POPULATE : 0), fd_,
                  (off_t)(first_id * page_bytes_)) != MAP_FAILED;
  }

  // Ok: [addr, addr+len) is PROT_NONE again. Failed: nothing changed (errno says why). Hole: the range was freed
  // but not filled again, so it is no longer reserved (recorded in holes_ for the pool to see).
  enum class Prot { Ok, Failed, Hole };
  // A rollback that could not make a range PROT_NONE leaves it mapping pages the pool takes back (they would
  // show through two slots): the slot must not trust that range either.
  void untrust(uintptr_t addr, uint64_t len) { holes_.push_back({addr, len}); }
  void untrust_unless(Prot p, uintptr_t addr, uint64_t len) {
    if (p == Prot::Failed) untrust(addr, len);
  }
  Prot protect_none(uintptr_t addr, uint64_t len) {
    ++calls;
    const int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (injected(kFaultProtect)) errno = ENOMEM;
    else if (injected(kFaultProtectHard)) errno = EINVAL;
    else if (::mmap((void*)addr, len, PROT_NONE, flags | MAP_FIXED, -1, 0) != MAP_FAILED) return Prot::Ok;
    if (errno != ENOMEM) return Prot::Failed;
    // At vm.max_map_count mmap refuses everything, even a call that would lower the count. munmap does not:
    // free the range first, then fill the hole.
    int err = errno;
    if (::munmap((void*)addr, len) != 0) return errno = err, Prot::Failed;
    return fill_hole(addr, len);
  }
  // [addr, addr+len) of a reservation is unmapped: PROT_NONE again, never over what another thread's mmap may have
  // put there meanwhile; else a hole for good (holes_).
  Prot fill_hole(uintptr_t addr, uint64_t len) {
    ++calls;
    int err = errno;
    if (!injected(kFaultNoreplace) &&
        mmap_noreplace(addr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0))
      return errno = err, Prot::Ok;
    holes_.push_back({addr, len});
    return errno = err, Prot::Hole;
  }
  // MAP_FIXED_NOREPLACE, which kernels before 4.17 take as a mere hint: a mapping placed elsewhere is undone.
  static bool mmap_noreplace(uintptr_t addr, uint64_t len, int prot, int flags, int fd, off_t off) {
    void* p = ::mmap((void*)addr, len, prot, flags | MAP_FIXED_NOREPLACE, fd, off);
    if (p == (void*)addr) return true;
    if (p != MAP_FAILED) {
      ::munmap(p, len);
      errno = EEXIST;
    }
    return false;
  }
  // After a failed remap into [addr, addr+len) of a reservation: the kernel unmaps a MREMAP_FIXED destination
  // before checks that can still fail (RLIMIT_AS, a mapping that cannot move), so the range is either as it was
  // (all of it mapped) or unmapped, and another thread's mmap may take it at any moment. True: the reservation is
  // whole again; false: a hole (recorded), which nothing here may map over or unmap. Left open (a review found
  // it): msync tells "mapped", not "mapped by us", so another thread's mmap that takes the freed range in the
  // microseconds between the failed remap and this check passes for ours. Telling them apart needs
  // /proc/self/maps, read on every failed remap; those follow an address-space limit or memory pressure, rare.
  bool settle(uintptr_t addr, uint64_t len) { return fully_mapped(addr, len) || fill_hole(addr, len) == Prot::Ok; }
  // msync(MS_ASYNC) writes nothing back (Linux 2.6.19+); it fails with ENOMEM where part of the range is unmapped.
  static bool fully_mapped(uintptr_t addr, uint64_t len) {
    int err = errno;
    bool all = ::msync((void*)addr, len, MS_ASYNC) == 0;
    errno = err;
    return all;
  }
  // The same after a failed remap into the park (unmap): found in review, the park kept the hole, a later mmap of
  // the process (malloc, torch) landed in it, and the next map of that page moved the foreign memory into a slot
  // (and zeroed the foreign allocation); close_pages unmapped it. The run is mapped from the memfd again; if that
  // fails the hole stays the process's, for good: no more remaps (pages map from the memfd, which is always
  // correct), and close_pages unmaps around it.
  void restore_park(uintptr_t at, uint64_t len, uint64_t first_id) {
    if (fully_mapped(at, len)) return;
    ++calls;
    int err = errno;
    if (!injected(kFaultNoreplace) &&
        mmap_noreplace(at, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, (off_t)(first_id * page_bytes_))) {
      errno = err;
      return;
    }
    park_holes_.push_back({at, len});
    remap_ok_ = false;
    errno = err;
  }

  // Moves a mapping and its page tables from src to dst (mremap with MREMAP_DONTUNMAP: src stays a mapping of
  // the same memfd range, without page tables). Skipped where the kernel cannot (before 5.13, or hugetlb): the
  // callers then map from the memfd, which is always correct, only slower. Failed: src is as it was, dst may be
  // unmapped (settle, restore_park).
  enum class Remap { Moved, Skipped, Failed };
  Remap remap(uintptr_t src, uintptr_t dst, uint64_t len) {
    if (!remap_ok_) return Remap::Skipped;
    ++calls;
    if (injected(kFaultMremap)) {  // as the kernel fails past its unmap of the destination
      ::munmap((void*)dst, len);
      return errno = ENOMEM, Remap::Failed;
    }
    void* p = ::mremap((void*)src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, (void*)dst);
    if (p != MAP_FAILED) return Remap::Moved;
    if (errno == EINVAL) remap_ok_ = false;
    return Remap::Failed;
  }

  // The park: every page of the pool mapped once, in order, with its page tables filled at creation. Pages are
  // moved out of it into slots and back. Filling it is the commit: the host (and, under a hypervisor, the VM)
  // backs every page now, not during a load.
  void make_park(bool prefault) {
    uint64_t bytes = total_pages_ * page_bytes_;
    park_ = reserve_aligned(bytes);
    const char* less = "make a smaller pool (capacity_bytes)";
    if (!park_) throw mmap_error("mapping the pool", errno, bytes, less);
    if (::mmap((void*)park_, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd_, 0) == MAP_FAILED) {
      int err = errno;
      ::munmap((void*)park_, bytes);
      park_ = 0;
      throw mmap_error("mapping the pool", err, bytes, less);
    }
    if (!prefault) return;
    const uint64_t chunk = 64ull << 20;
    unsigned n_threads = std::max(1u, std::min(4u, std::thread::hardware_concurrency()));
    std::atomic<uint64_t> next{0};
    auto work = [&] {
      for (uint64_t o; (o = next.fetch_add(chunk)) < bytes;) {
        uint64_t len = std::min(chunk, bytes - o);
        if (::madvise((void*)(park_ + o), len, 23 /* MADV_POPULATE_WRITE, Linux 5.14 */) != 0) {
          volatile char* p = (volatile char*)(park_ + o);  // older kernels: touch every page
          for (uint64_t k = 0; k < len; k += 4096) p[k] = 0;
        }
      }
    };
    std::vector<std::thread> ts;
    try {
      ts.reserve(n_threads);
      for (unsigned t = 1; t < n_threads; ++t) ts.emplace_back(work);
    } catch (const std::exception&) {
      // No thread to be had (EAGAIN under a pids or process limit, ENOMEM for a stack under an address-space
      // limit): only speed is lost, as the threads share `next` and this thread's work() takes what they leave
      // (found in review: std::system_error left here with a joinable thread in ts, and std::terminate ended the
      // worker; with none started it surfaced as an untyped RuntimeError).
    }
    work();
    for (auto& t : ts) t.join();
  }

  uintptr_t park_ = 0;
  bool remap_ok_ = true;
  std::vector<std::pair<uintptr_t, uint64_t>> holes_;  // see take_holes and untrust (guarded by the pool mutex)
  std::vector<std::pair<uintptr_t, uint64_t>> park_holes_;  // restore_park (guarded by the pool mutex)

 private:
  int fd_ = -1;
  bool huge_ = false;
};

}  // namespace

void debug_fail_after(const std::string& op, int64_t k) {
  static const char* names[kFaults] = {"mmap", "mremap", "protect", "noreplace", "protect_hard"};
  if (k < 0) throw invalid("_debug_fail_after: k must be >= 0, not " + std::to_string(k));
  for (int f = 0; f < kFaults; ++f)
    if (op == names[f]) {
      g_fail_after[f] = k;
      return;
    }
  throw invalid("_debug_fail_after: op must be mmap, mremap, protect, noreplace or protect_hard, not '" + op + "'");
}

std::unique_ptr<Backend> make_host_backend(uint64_t capacity_bytes, uint64_t page_bytes, bool prefault) {
  return std::make_unique<HostBackend>(capacity_bytes, page_bytes, prefault);
}

}  // namespace ws
