// The page pool and its slots: which pool page is mapped where, owner tags, pins of live views.
// One mutex per pool guards the pool and all its slots, so map/unmap/move from any thread are atomic with
// respect to each other; copies (loader threads, views) run outside it on memory that pins keep mapped.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "errors.h"

namespace ws {

struct Slot;
class LoadJob;

// Free pages as extents, so that allocation hands out long runs of adjacent pages (one mapping each).
class FreeList {
 public:
  void reset(uint64_t n);
  uint64_t size() const { return free_; }
  // n pages, preferring to continue right after `hint` (the pool page before the target), then one extent.
  std::vector<uint64_t> take(uint64_t n, int64_t hint);
  void give(std::vector<uint64_t> ids);

 private:
  void insert(uint64_t start, uint64_t len);
  void erase(std::map<uint64_t, uint64_t>::iterator it);
  std::map<uint64_t, uint64_t> by_start_;        // start -> len
  std::set<std::pair<uint64_t, uint64_t>> by_len_;  // (len, start)
  uint64_t free_ = 0;
};

struct Pool : std::enable_shared_from_this<Pool> {
  std::mutex mu;
  std::condition_variable jobs_cv;  // signalled (with mu) when a load leaves `jobs`
  std::set<LoadJob*> jobs;          // loads still holding pins (registered and removed by LoadJob, with mu)
  std::unique_ptr<Backend> backend;
  FreeList free;
  std::map<uint64_t, std::weak_ptr<Slot>> slots;
  uint64_t next_slot_id = 1;
  bool closed = false;
  bool close_done = false;  // the close() that set `closed` has finished (signalled on jobs_cv, with mu)
  // stats
  uint64_t n_map = 0, n_unmap = 0, n_move = 0, pages_mapped = 0, pages_unmapped = 0, pages_moved = 0;
  std::atomic<uint64_t> bytes_loaded{0};

  Pool(std::unique_ptr<Backend> b);
  ~Pool();
  void check_open() const;
  // Refuses new work, cancels every running load and waits until each has rolled back, then unmaps every page
  // that no live pinned view covers. Pages under live views stay mapped until the last pin over them goes (~Pin
  // unmaps them, or ~Slot); the physical pages are freed now if none remains mapped, else by whichever of ~Pin,
  // Slot::close or ~Slot unmaps the last one.
  // captures: whether the drain first waits for CUDA graph captures on other threads (Backend::drain); ~Pool
  // passes false, as it may run with the GIL held. A second caller while the first is still closing waits for it,
  // so every close() returns with the pool closed.
  void close(bool captures = true);
  // With mu held: frees the physical pages once the pool is closed and none is mapped any more (idempotent).
  void close_pages_if_unused_locked();
  // With mu held: cancels the loads into `only` (every load when null) and waits until they have finished.
  void cancel_jobs_locked(std::unique_lock<std::mutex>& l, const Slot* only);
};

// The largest reservation a slot may ask for: 2^47 bytes (128 TiB) is all the user address space x86-64 and
// arm64 give a process with 4-level page tables, so anything larger can never be reserved.
constexpr uint64_t kMaxReserveBytes = 1ull << 47;

struct Slot {
  std::shared_ptr<Pool> pool;
  uint64_t id = 0;
  std::string tag;
  uintptr_t base = 0;
  uint64_t n_pages = 0;             // reserved
  std::vector<int64_t> table;       // pool page id per slot page, -1 = unmapped
  std::vector<uint32_t> pins;       // live pinned views / running loads per slot page
  // (first page, pages) of each live pinned view (Pin), the views' share of `pins`: close() checks them before it
  // cancels the slot's loads, so that a close refused for a view has no side effects (found in review).
  std::multiset<std::pair<uint64_t, uint64_t>> view_pins;
  uint64_t mapped = 0;
  bool closed = false;
  bool closing = false;             // close() waits for its loads to roll back: no new operation starts
  // Parts of the reservation a failed host operation left in an unknown state (Backend::take_holes): the slot
  // then refuses every operation (SlotUnusable) but close, and never maps into or releases these ranges.
  std::vector<std::pair<uintptr_t, uint64_t>> holes;

  ~Slot();
  uint64_t page_bytes() const { return pool->backend->page_bytes(); }

  // All of these take pool->mu themselves.
  void map(uint64_t off, uint64_t n);
  void unmap(uint64_t off, uint64_t n);
  void move_to(uint64_t off, uint64_t n, Slot& dst, uint64_t dst_off);
  void close(bool force);
  uint64_t grow(uint64_t n);    // maps n pages right after the last mapped page; returns their offset
  void shrink(uint64_t n);      // unmaps the n highest mapped pages
  bool is_mapped(uint64_t off, uint64_t n);
  std::vector<std::pair<uint64_t, uint64_t>> mapped_ranges();
  std::vector<int64_t> physical_pages(uint64_t off, uint64_t n);

  // With pool->mu held.
  void check_open_locked() const;
  void check_range(uint64_t off, uint64_t n, const char* what) const;
  void check_unpinned(uint64_t off, uint64_t n, const char* what) const;
  void check_no_views(const char* what) const;  // ViewsAlive while a pinned view of the slot lives
  // check_unpinned over what unmapping pages [off, off + n) touches (Backend::cut_extent): on cuda, the other
  // pages of the driver mappings it cuts are unmapped for a while too.
  void check_cut_unpinned(uint64_t off, uint64_t n, const char* what) const;
  // The pages [first, last) an unmap of [off, off + n) unmaps for a while (Backend::cut_extent, within the slot),
  // and the first of them outside [off, off + n) that is pinned (-1: none).
  std::pair<uint64_t, uint64_t> cut_pages(uint64_t off, uint64_t n) const;
  int64_t pinned_beside(uint64_t off, uint64_t n) const;
  void map_locked(uint64_t off, uint64_t n, bool populate);
  void unmap_locked(uint64_t off, uint64_t n);
  void unmap_all_locked();
  void unmap_unpinned_locked(uint64_t from, uint64_t to);  // every mapped page of [from, to) no view or load pins
  void pin_locked(uint64_t off, uint64_t n, int delta);
  // After a backend call: moves the backend's holes into the slot (this or other) they fall in; public
  // operations then throw unusable_error() (after the tables are up to date), and so does every later one.
  void absorb_holes_locked(Slot* other);
  Error unusable_error() const;
  void release_locked();  // the reservation, minus holes
};

std::shared_ptr<Slot> create_slot(const std::shared_ptr<Pool>& pool, uint64_t reserve_bytes, const std::string& tag);

// Keeps pages [off, off+n) of a slot pinned (unmap/move refused) and the slot's reservation alive while it lives.
// On a closed pool, the last pin over a page unmaps it when it goes (and frees the pool's pages once none is mapped).
struct Pin {
  std::shared_ptr<Slot> slot;
  uint64_t off, n;
  bool pinned;
  Pin(std::shared_ptr<Slot> s, uint64_t off, uint64_t n, bool pinned);
  ~Pin();
};

// ---------------------------------------------------------- FreeList (self-contained: here, so pool.cpp stays short)
inline void FreeList::reset(uint64_t n) {
  by_start_.clear();
  by_len_.clear();
  free_ = 0;
  if (n) insert(0, n);
}

inline void FreeList::erase(std::map<uint64_t, uint64_t>::iterator it) {
  by_len_.erase({it->second, it->first});
  free_ -= it->second;
  by_start_.erase(it);
}

inline void FreeList::insert(uint64_t start, uint64_t len) {
  auto next = by_start_.find(start + len);
  if (next != by_start_.end()) {
    len += next->second;
    erase(next);
  }
  auto it = by_start_.lower_bound(start);
  if (it != by_start_.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second == start) {
      start = prev->first;
      len += prev->second;
      erase(prev);
    }
  }
  by_start_[start] = len;
  by_len_.insert({len, start});
  free_ += len;
}

inline std::vector<uint64_t> FreeList::take(uint64_t n, int64_t hint) {
  std::vector<uint64_t> out;
  out.reserve(n);
  auto take_from = [&](uint64_t start, uint64_t len, uint64_t k) {
    erase(by_start_.find(start));
    for (uint64_t i = 0; i < k; ++i) out.push_back(start + i);
    if (len > k) insert(start + k, len - k);
  };
  if (hint >= 0) {  // continue the run before the target: the new pages merge into the same kernel mapping
    auto it = by_start_.find(uint64_t(hint) + 1);
    if (it != by_start_.end() && it->second >= n) {
      take_from(it->first, it->second, n);
      return out;
    }
  }
  auto fit = by_len_.lower_bound({n, 0});  // smallest extent that holds all n: one run
  if (fit != by_len_.end()) {
    take_from(fit->second, fit->first, n);
    return out;
  }
  while (out.size() < n) {  // no single extent is long enough: largest first, fewest runs
    auto big = std::prev(by_len_.end());
    uint64_t k = std::min<uint64_t>(big->first, n - out.size());
    take_from(big->second, big->first, k);
  }
  return out;
}

inline void FreeList::give(std::vector<uint64_t> ids) {
  std::sort(ids.begin(), ids.end());
  size_t i = 0;
  while (i < ids.size()) {
    size_t j = i + 1;
    while (j < ids.size() && ids[j] == ids[j - 1] + 1) ++j;
    insert(ids[i], j - i);
    i = j;
  }
}

}  // namespace ws
