#include "pool.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <new>
#include <set>
#include <thread>

#include "loader.h"

namespace ws {

// ---------------------------------------------------------------- pool
Pool::Pool(std::unique_ptr<Backend> b) : backend(std::move(b)) { free.reset(backend->total_pages()); }

Pool::~Pool() {
  try {
    close(false);  // possibly with the GIL held (the last reference from a slot or a view): no capture wait
  } catch (...) {
  }
}

void Pool::check_open() const {
  if (closed) throw Error(ErrorKind::Closed, "the page pool is closed");
}

void Pool::close(bool captures) {
  {
    // Closed already, or closing in another thread: wait for that close to finish (found in review: a second
    // caller returned while the first still waited for loads to roll back, its pages still mapped).
    std::unique_lock<std::mutex> l(mu);
    if (closed) {
      jobs_cv.wait(l, [&] { return close_done; });
      return;
    }
  }
  backend->drain_quietly(captures);  // outside mu (Backend::drain): device work still using pages about to go
  std::vector<std::shared_ptr<Slot>> keep;  // declared before the lock, so destroyed after it (~Slot takes mu)
  std::unique_lock<std::mutex> l(mu);
  if (closed) {
    jobs_cv.wait(l, [&] { return close_done; });
    return;
  }
  closed = true;  // from here on: no new slots, maps, views or loads; running loads stop at their next step
  struct Done {  // however this ends (close_pages may throw), callers waiting above are let go, with mu held
    Pool& p;
    ~Done() {
      p.close_done = true;
      p.jobs_cv.notify_all();
    }
  } done{*this};
  cancel_jobs_locked(l, nullptr);
  for (auto& [id, w] : slots)
    if (auto s = w.lock()) keep.push_back(std::move(s));
  for (auto& s : keep) {
    try {
      s->unmap_unpinned_locked(0, s->n_pages);
    } catch (const Error&) {  // what failed to unmap stays mapped: ~Slot tries again
    }
    s->closed = true;
  }
  slots.clear();
  close_pages_if_unused_locked();
}

void Pool::close_pages_if_unused_locked() {
  // Counted on the free list, not on `keep`: a slot whose last reference is going in another thread (its ~Slot
  // waiting for mu) is in neither, and still has pages mapped. Pages still mapped (under live pinned views, or in
  // such a slot) keep the memory: the ~Slot that unmaps the last of them calls this again.
  if (closed && free.size() == backend->total_pages()) backend->close_pages();
}

void Pool::cancel_jobs_locked(std::unique_lock<std::mutex>& l, const Slot* only) {
  // No job joins while this waits with mu released: a LoadJob checks its slot (closing) or the pool (closed) and
  // registers in `jobs` under one hold of mu, and both flags are set before this runs.
  auto pending = [&] {
    for (LoadJob* j : jobs)
      if (!only || j->slot() == only) return true;
    return false;
  };
  for (LoadJob* j : jobs)
    if (!only || j->slot() == only) j->cancel();  // takes the job's own mutex: order pool mu -> job mu
  jobs_cv.wait(l, [&] { return !pending(); });  // each job's finish() rolls back (with mu) and leaves `jobs`
}

// ---------------------------------------------------------------- slots
// All the address space less the 2 MiB HostBackend::reserve_aligned adds (found in review: 2^47 always failed).
constexpr uint64_t kAlignBytes = 2ull << 20, kMaxSlotBytes = kMaxReserveBytes - kAlignBytes;

std::shared_ptr<Slot> create_slot(const std::shared_ptr<Pool>& pool, uint64_t reserve_bytes, const std::string& tag) {
  uint64_t pb = pool->backend->page_bytes();
  if (reserve_bytes == 0) throw invalid("reserve_bytes must be positive");
  uint64_t n = reserve_bytes / pb + (reserve_bytes % pb != 0);  // round up without overflow
  if (reserve_bytes > kMaxSlotBytes || n * pb > kMaxSlotBytes)  // no overflow: n * pb <= kMaxSlotBytes + pb here
    throw invalid("reserve_bytes=" + std::to_string(reserve_bytes) + " (in whole pages of " + fmt_bytes(pb) +
                  ") is larger than the " + fmt_bytes(kMaxReserveBytes) + " of address space a process has, less " +
                  fmt_bytes(kAlignBytes) + " for alignment: reserve what the slot can use");
  auto s = std::make_shared<Slot>();
  // The tables come first, without the pool mutex (they can be large and slow) and before the slot is attached
  // to the pool: a slot without a pool has nothing for ~Slot to undo, so a failure here needs no lock.
  try {
    s->table.assign(n, -1);
    s->pins.assign(n, 0);
  } catch (const std::bad_alloc&) {
    Error e(ErrorKind::OutOfMemory, "slot '" + tag + "' of " + fmt_bytes(reserve_bytes) + " has " + std::to_string(n) +
                                        " pages of " + fmt_bytes(pb) + ": its page table needs " +
                                        fmt_bytes(n * 12) + " of host memory, which cannot be allocated. Fix: "
                                        "reserve less, or use larger page_bytes");
    e.asked_bytes = n * 12;
    throw e;
  }
  std::lock_guard<std::mutex> g(pool->mu);
  pool->check_open();
  try {
    s->base = pool->backend->reserve(n);
  } catch (const Error& e) {  // no free range that long: the host's ENOMEM, or cuMemAddressReserve's out of memory
    if (!e.limit.empty()) throw reworded(e, "slot '" + tag + "': " + e.what());  // RLIMIT_AS: says so, with the fix
    if (e.kind != ErrorKind::OutOfMemory && e.name != "CUDA_ERROR_OUT_OF_MEMORY") throw;
    uint64_t open = 0;
    for (auto& [id, w] : pool->slots) open += !w.expired();
    Error oom(ErrorKind::OutOfMemory, "slot '" + tag + "' of " + fmt_bytes(n * pb) + " cannot be reserved: the "
              "process's virtual address space (" + fmt_bytes(kMaxReserveBytes) + " in all) has no free range that "
              "large left (" + e.what() + "; this pool has " + std::to_string(open) + " other slot(s) open). Fix: "
              "reserve less (reserve_bytes: what the slot can use), or close the slots no longer needed and drop "
              "them (a slot's addresses are freed when its last reference, views included, goes)");
    oom.asked_bytes = n * pb, oom.total_bytes = kMaxReserveBytes;
    throw oom;
  }
  s->pool = pool;  // from here on ~Slot releases the reservation
  s->id = pool->next_slot_id++;
  s->tag = tag;
  s->n_pages = n;
  pool->slots[s->id] = s;
  return s;
}

Slot::~Slot() {
  if (!pool) return;
  // Nothing else references this slot any more (views and loads hold it): reading `mapped` needs no lock.
  // With the GIL held where a DLPack deleter drops the last reference: no wait for captures (Backend::drain).
  if (mapped) pool->backend->drain_quietly(false);
  std::lock_guard<std::mutex> g(pool->mu);
  try {
    if (mapped) unmap_all_locked();  // also the pages a closed pool left mapped under this slot's last views
  } catch (...) {
  }
  pool->slots.erase(id);
  try {
    release_locked();
  } catch (...) {
  }
  // Pages a failed unmap left in the table: nothing references this slot any more, and its reservation is gone
  // (or, in a hole, is never reused), so nobody reaches them through it: back to the pool, whose count would
  // otherwise stay short for good (found in review).
  std::vector<uint64_t> left;
  for (uint64_t i = 0; i < n_pages; ++i)
    if (table[i] >= 0) left.push_back(uint64_t(table[i]));
  if (!left.empty()) {
    pool->free.give(left);
    pool->pages_unmapped += left.size();
    mapped = 0;
  }
  pool->close_pages_if_unused_locked();
}

void Slot::check_open_locked() const {
  pool->check_open();
  if (closed || closing) throw Error(ErrorKind::Closed, "slot '" + tag + "' is " + (closed ? "closed" : "closing"));
  if (!holes.empty()) throw unusable_error();
}

Error Slot::unusable_error() const {
  uint64_t bytes = 0;
  for (auto& h : holes) bytes += h.second;
  Error e(ErrorKind::SlotUnusable,
          "slot '" + tag + "' is unusable: a failed mmap left " + fmt_bytes(bytes) +
              " of its reserved address range in a state its page table cannot describe (unreserved by the munmap "
              "fallback used at vm.max_map_count, so another mmap may own it now, or still mapping pages a "
              "rollback gave back), so it refuses every operation but close and never touches that range again. "
              "Fix: close the slot (its pages go back to the pool) and create a new one; raise vm.max_map_count");
  e.asked_bytes = bytes;
  return e;
}

void Slot::absorb_holes_locked(Slot* other) {
  uint64_t pb = page_bytes();
  for (auto& h : pool->backend->take_holes()) {
    if (h.first >= base && h.first < base + n_pages * pb) holes.push_back(h);
    else if (other) other->holes.push_back(h);
  }
}

namespace {
std::mutex capture_mu;
std::condition_variable capture_cv;
std::multiset<std::thread::id> capturing;  // a thread per capture under way
int draining = 0;                          // drains between drain_begin and drain_end
}  // namespace

void capture_enter() {
  // not while a drain runs: it checked for captures before its synchronize, and one beginning now would fall
  // under that synchronize all the same
  std::unique_lock<std::mutex> l(capture_mu);
  capture_cv.wait(l, [] { return draining == 0; });
  capturing.insert(std::this_thread::get_id());
}

void capture_exit() {
  {
    std::lock_guard<std::mutex> g(capture_mu);
    auto it = capturing.find(std::this_thread::get_id());
    if (it != capturing.end()) capturing.erase(it);
  }
  capture_cv.notify_all();
}

void drain_begin(const char* what) {
  std::unique_lock<std::mutex> l(capture_mu);
  if (capturing.count(std::this_thread::get_id()))
    throw invalid(std::string(what) + " on a thread that is capturing a CUDA graph: it would synchronize the "
                  "context under its own capture (invalid) and wait for itself. Fix: drop tensors and close engines "
                  "before the capture, or after it (engine/graphs.py disables the garbage collector meanwhile)");
  capture_cv.wait(l, [] { return capturing.empty(); });
  ++draining;
}

void drain_end() {
  {
    std::lock_guard<std::mutex> g(capture_mu);
    --draining;
  }
  capture_cv.notify_all();
}

void Slot::release_locked() { pool->backend->release_reservation(base, n_pages, holes); }

void Backend::release_reservation(uintptr_t addr, uint64_t n_pages,
                                  std::vector<std::pair<uintptr_t, uint64_t>> holes) {
  const uint64_t pb = page_bytes();
  std::sort(holes.begin(), holes.end());
  uintptr_t at = addr, end = addr + n_pages * pb;
  for (auto& [a, len] : holes) {  // never munmap a hole: another mmap may own it now
    if (a > at) release(at, (a - at) / pb);
    at = std::max<uintptr_t>(at, a + len);
  }
  if (end > at) release(at, (end - at) / pb);
}

void Slot::check_range(uint64_t off, uint64_t n, const char* what) const {
  if (n == 0) throw invalid(std::string(what) + ": n_pages must be positive");
  if (off >= n_pages || n > n_pages - off)
    throw invalid(std::string(what) + ": pages [" + std::to_string(off) + ", " + std::to_string(off + n) +
                  ") are outside slot '" + tag + "', which reserves " + std::to_string(n_pages) + " pages");
}

void Slot::check_unpinned(uint64_t off, uint64_t n, const char* what) const {
  for (uint64_t i = off; i < off + n; ++i)
    if (pins[i]) {
      Error e(ErrorKind::ViewsAlive,
              std::string(what) + " of pages [" + std::to_string(off) + ", " + std::to_string(off + n) + ") of slot '" +
                  tag + "': page " + std::to_string(i) + " is held by " + std::to_string(pins[i]) +
                  " live pinned tensor view(s) or running load(s). Fix: drop the tensors (del t), wait for the "
                  "load, or make the views with pinned=False");
      throw e;
    }
}

void Slot::check_no_views(const char* what) const {
  if (view_pins.empty()) return;
  const auto [first, n] = *view_pins.begin();
  throw Error(ErrorKind::ViewsAlive,
              std::string(what) + " of slot '" + tag + "': " + std::to_string(view_pins.size()) +
                  " live pinned tensor view(s) hold its pages (the first pages [" + std::to_string(first) + ", " +
                  std::to_string(first + n) + ")); nothing was changed, its loads go on. Fix: drop the tensors "
                  "(del t), make the views with pinned=False, or close(force=True) (stale views then fault on "
                  "access)");
}

std::pair<uint64_t, uint64_t> Slot::cut_pages(uint64_t off, uint64_t n) const {
  const uint64_t pb = page_bytes();
  const auto [lo, count] = pool->backend->cut_extent(base + off * pb, n);
  const uintptr_t end = std::min<uintptr_t>(lo + count * pb, base + n_pages * pb);  // runs never cross a slot,
  const uint64_t first = lo > base ? (lo - base) / pb : 0;                          // but clamp all the same
  return {std::min(first, off), std::max<uint64_t>(end > base ? (end - base) / pb : 0, off + n)};
}

int64_t Slot::pinned_beside(uint64_t off, uint64_t n) const {
  const auto [first, last] = cut_pages(off, n);
  for (uint64_t i = first; i < last; ++i)
    if ((i < off || i >= off + n) && pins[i]) return int64_t(i);
  return -1;
}

void Slot::check_cut_unpinned(uint64_t off, uint64_t n, const char* what) const {
  check_unpinned(off, n, what);
  const int64_t p = pinned_beside(off, n);
  if (p < 0) return;
  const uint64_t i = uint64_t(p);
  const auto [first, last] = cut_pages(off, n);
  Error e(ErrorKind::ViewsAlive,
          std::string(what) + " of pages [" + std::to_string(off) + ", " + std::to_string(off + n) + ") of slot '" +
              tag + "': page " + std::to_string(i) + " shares one driver mapping (pages [" + std::to_string(first) +
              ", " + std::to_string(last) + ")) with them, which the driver unmaps only whole, and is held by " +
              std::to_string(pins[i]) + " live pinned tensor view(s) or running load(s): it would be unmapped for a "
              "while under them. Fix: drop those tensors (del t) or wait for the load first, or unmap the whole "
              "mapping");
  throw e;
}

void Slot::map_locked(uint64_t off, uint64_t n, bool populate) {
  check_open_locked();
  check_range(off, n, "map");
  for (uint64_t i = off; i < off + n; ++i)
    if (table[i] >= 0)
      throw invalid("map of pages [" + std::to_string(off) + ", " + std::to_string(off + n) + ") of slot '" + tag +
                    "' overlaps page " + std::to_string(i) + ", which is already mapped");
  uint64_t pb = page_bytes();
  if (pool->free.size() < n) {
    Error e(ErrorKind::OutOfMemory,
            "mapping " + std::to_string(n) + " pages of slot '" + tag + "' needs " + fmt_bytes(n * pb) + ", " +
                fmt_bytes(pool->free.size() * pb) + " of " + fmt_bytes(pool->backend->total_pages() * pb) + " free in the " +
                pool->backend->name() +
                " pool. Fix: unmap or close idle slots (pool.pages_by_tag() shows who holds pages), or create the "
                "pool with a larger capacity_bytes");
    e.asked_bytes = n * pb;
    e.free_bytes = pool->free.size() * pb;
    e.total_bytes = pool->backend->total_pages() * pb;
    throw e;
  }
  int64_t hint = off > 0 ? table[off - 1] : -1;
  std::vector<uint64_t> ids = pool->free.take(n, hint);
  try {
    pool->backend->map(base + off * pb, ids.data(), n, populate);
  } catch (...) {
    pool->free.give(ids);
    absorb_holes_locked(nullptr);
    if (!holes.empty()) throw unusable_error();
    throw;
  }
  for (uint64_t i = 0; i < n; ++i) table[off + i] = int64_t(ids[i]);
  mapped += n;
  pool->n_map++;
  pool->pages_mapped += n;
}

void Slot::unmap_locked(uint64_t off, uint64_t n) {
  std::vector<uint64_t> ids(n);
  for (uint64_t i = 0; i < n; ++i) ids[i] = uint64_t(table[off + i]);
  auto forget = [&](const std::vector<uint8_t>* done) {  // the table follows the pages that did go
    std::vector<uint64_t> gone;
    for (uint64_t i = 0; i < n; ++i)
      if (!done || (*done)[i]) {
        table[off + i] = -1;
        gone.push_back(ids[i]);
      }
    pool->free.give(gone);
    mapped -= gone.size();
    pool->pages_unmapped += gone.size();
  };
  try {
    pool->backend->unmap(base + off * page_bytes(), ids.data(), n);
  } catch (const Error& e) {
    if (e.page_done.size() == n) forget(&e.page_done);
    absorb_holes_locked(nullptr);
    throw;
  }
  forget(nullptr);
  pool->n_unmap++;
  absorb_holes_locked(nullptr);  // unmapped all the same; the next operation reports the slot unusable
}

void Slot::map(uint64_t off, uint64_t n) {
  std::lock_guard<std::mutex> g(pool->mu);
  map_locked(off, n, false);
}

void Slot::unmap(uint64_t off, uint64_t n) {
  pool->backend->drain();  // outside the mutex (Backend::drain)
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  check_range(off, n, "unmap");
  for (uint64_t i = off; i < off + n; ++i)
    if (table[i] < 0)
      throw invalid("unmap of pages [" + std::to_string(off) + ", " + std::to_string(off + n) + ") of slot '" + tag +
                    "': page " + std::to_string(i) + " is not mapped (double unmap?)");
  check_cut_unpinned(off, n, "unmap");
  unmap_locked(off, n);
  if (!holes.empty()) throw unusable_error();  // the pages are back in the pool; the slot is not usable
}

void Slot::move_to(uint64_t off, uint64_t n, Slot& dst, uint64_t dst_off) {
  pool->backend->drain();  // outside the mutex (Backend::drain)
  std::lock_guard<std::mutex> g(pool->mu);
  if (dst.pool != pool) throw invalid("move_pages: the destination slot belongs to another pool");
  check_open_locked();
  dst.check_open_locked();
  check_range(off, n, "move_pages (source)");
  dst.check_range(dst_off, n, "move_pages (destination)");
  for (uint64_t i = off; i < off + n; ++i)
    if (table[i] < 0)
      throw invalid("move_pages: source page " + std::to_string(i) + " of slot '" + tag + "' is not mapped");
  for (uint64_t i = dst_off; i < dst_off + n; ++i)
    if (dst.table[i] >= 0)
      throw invalid("move_pages: destination page " + std::to_string(i) + " of slot '" + dst.tag +
                    "' is already mapped");
  check_cut_unpinned(off, n, "move_pages (source)");
  dst.check_unpinned(dst_off, n, "move_pages (destination)");
  uint64_t pb = page_bytes();
  std::vector<uint64_t> ids(n);
  for (uint64_t i = 0; i < n; ++i) ids[i] = uint64_t(table[off + i]);
  auto follow = [&](const std::vector<uint8_t>* done) {  // the tables follow the pages that did move
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; ++i)
      if (!done || (*done)[i]) {
        dst.table[dst_off + i] = table[off + i];
        table[off + i] = -1;
        ++k;
      }
    mapped -= k;
    dst.mapped += k;
    pool->pages_moved += k;
  };
  try {
    pool->backend->move(base + off * pb, dst.base + dst_off * pb, ids.data(), n);
  } catch (const Error& e) {
    if (e.page_done.size() == n) follow(&e.page_done);
    absorb_holes_locked(&dst);
    if (!holes.empty()) throw unusable_error();
    if (!dst.holes.empty()) throw dst.unusable_error();
    throw;
  }
  follow(nullptr);
  pool->n_move++;
  absorb_holes_locked(&dst);
  if (!holes.empty()) throw unusable_error();
  if (!dst.holes.empty()) throw dst.unusable_error();
}

void Slot::close(bool force) {
  try {  // outside the mutex (Backend::drain)
    pool->backend->drain();
  } catch (const Error& e) {  // a sticky context error must not stop a close; a capture on this thread does, as
    if (e.kind == ErrorKind::InvalidArgument) throw;  // in unmap: undrained, it would unmap under queued kernels
  } catch (...) {  // anything else (bad_alloc): the close goes on, as it did with drain_quietly
  }
  std::unique_lock<std::mutex> l(pool->mu);
  if (!closed && !pool->closed) {
    // Views before loads: a close refused for a live view must not have cancelled the loads (found in review).
    // No view can be made once `closing` is set (check_open_locked), so none appears while mu is released below.
    if (!force) check_no_views("close");
    closing = true;  // a load (or map) started while mu is released below is refused (check_open_locked)
    pool->cancel_jobs_locked(l, this);  // releases mu while the loads roll back
    closing = false;  // mu is held from here on
  }
  if (closed || pool->closed) {
    closed = true;
    // On a closed pool: unmap what no live pinned view covers, and free the pool's pages once none is mapped
    // (found in review: this returned at once, so pages the pool's close could not unmap stayed, with the whole
    // pool's memory, for as long as the Slot object lived). Pages under live views stay until the last goes (~Pin).
    if (pool->closed && mapped) {
      try {  // as Pool::close: what fails to unmap stays mapped, ~Slot tries again; close stays idempotent
        unmap_unpinned_locked(0, n_pages);
        pool->close_pages_if_unused_locked();
      } catch (const Error&) {
      }
    }
    return;
  }
  if (!force) check_unpinned(0, n_pages, "close");  // its loads have ended and it had no views: holds, as a guard
  unmap_all_locked();
  closed = true;
  pool->slots.erase(id);
}

uint64_t Slot::grow(uint64_t n) {
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  uint64_t off = n_pages;
  while (off > 0 && table[off - 1] < 0) --off;
  map_locked(off, n, false);
  return off;
}

void Slot::shrink(uint64_t n) {
  pool->backend->drain();  // outside the mutex (Backend::drain)
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  if (n == 0 || n > mapped)
    throw invalid("shrink by " + std::to_string(n) + " pages: slot '" + tag + "' has " + std::to_string(mapped) +
                  " mapped pages (n must be in [1, mapped])");
  std::vector<uint64_t> top;  // the n highest mapped pages
  for (uint64_t i = n_pages; i-- > 0 && top.size() < n;)
    if (table[i] >= 0) top.push_back(i);
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // top is descending: (first page, pages) of each run of it
  for (size_t k = 0; k < top.size();) {
    size_t m = k + 1;
    while (m < top.size() && top[m] + 1 == top[m - 1]) ++m;
    runs.emplace_back(top[m - 1], m - k);
    k = m;
  }
  for (auto [first, count] : runs) check_cut_unpinned(first, count, "shrink");  // all checked before any unmap
  for (auto [first, count] : runs) unmap_locked(first, count);
  if (!holes.empty()) throw unusable_error();
}

bool Slot::is_mapped(uint64_t off, uint64_t n) {
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  check_range(off, n, "is_mapped");
  for (uint64_t i = off; i < off + n; ++i)
    if (table[i] < 0) return false;
  return true;
}

std::vector<std::pair<uint64_t, uint64_t>> Slot::mapped_ranges() {
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  uint64_t i = 0;
  while (i < n_pages) {
    if (table[i] < 0) { ++i; continue; }
    uint64_t j = i;
    while (j < n_pages && table[j] >= 0) ++j;
    runs.push_back({i, j - i});
    i = j;
  }
  return runs;
}

std::vector<int64_t> Slot::physical_pages(uint64_t off, uint64_t n) {
  std::lock_guard<std::mutex> g(pool->mu);
  check_open_locked();
  check_range(off, n, "physical_pages");
  return std::vector<int64_t>(table.begin() + off, table.begin() + off + n);
}

void Slot::unmap_all_locked() {
  uint64_t i = 0;
  while (i < n_pages) {
    if (table[i] < 0) { ++i; continue; }
    uint64_t j = i;
    while (j < n_pages && table[j] >= 0) ++j;
    unmap_locked(i, j - i);
    i = j;
  }
}

void Slot::unmap_unpinned_locked(uint64_t from, uint64_t to) {
  to = std::min(to, n_pages);
  uint64_t i = from;
  while (i < to) {
    if (table[i] < 0 || pins[i]) { ++i; continue; }
    uint64_t j = i;
    while (j < to && table[j] >= 0 && !pins[j]) ++j;
    if (pinned_beside(i, j - i) < 0) unmap_locked(i, j - i);  // else it stays until the view goes (~Pin, ~Slot)
    i = j;
  }
}

void Slot::pin_locked(uint64_t off, uint64_t n, int delta) {
  for (uint64_t i = off; i < off + n; ++i)
    if (delta > 0 || pins[i]) pins[i] += delta;
}

Pin::Pin(std::shared_ptr<Slot> s, uint64_t off_, uint64_t n_, bool pinned_)
    : slot(std::move(s)), off(off_), n(n_), pinned(pinned_) {
  if (!pinned) return;
  slot->view_pins.emplace(off, n);  // caller holds pool->mu; inserted first: if it throws, nothing is pinned
  slot->pin_locked(off, n, +1);
}

Pin::~Pin() {
  if (!pinned) return;
  Pool& p = *slot->pool;  // `slot` keeps the pool alive until this returns
  bool sweep = false;
  {
    std::lock_guard<std::mutex> g(p.mu);
    slot->pin_locked(off, n, -1);
    slot->view_pins.erase(slot->view_pins.find({off, n}));
    // A closed pool left these pages mapped for this view (Pool::close marks its slots closed under the same hold
    // of mu as its unmap, so a pin that goes earlier is swept by that close). Found in review: the last pin went
    // and nothing unmapped them, so the pool's whole memory stayed for as long as the Slot object lived.
    if (p.closed && slot->closed && slot->mapped)
      for (uint64_t i = off; i < off + n && !sweep; ++i) sweep = !slot->pins[i] && slot->table[i] >= 0;
  }
  if (!sweep) return;
  // As ~Slot: the drain outside mu (Backend::drain), without waiting for captures (a DLPack deleter may hold the
  // GIL). Lock order unchanged: mu alone, taken again; a pin that goes meanwhile sweeps too (idempotent).
  p.backend->drain_quietly(false);
  std::lock_guard<std::mutex> g(p.mu);
  try {
    // The driver mappings these pages share (cuda): unpinned pages kept beside them (pinned_beside) go now too.
    const auto [first, last] = slot->cut_pages(off, n);
    slot->unmap_unpinned_locked(first, last);
  } catch (...) {  // what failed to unmap stays mapped: Slot::close or ~Slot tries again
  }
  try {
    p.close_pages_if_unused_locked();
  } catch (...) {
  }
}

}  // namespace ws
