// Pipelined load: copy byte ranges of files or host buffers into a slot while a mapper thread maps (and
// populates) the destination pages ahead of the copier threads. Runs entirely in C++ threads that never touch
// Python; the caller polls progress. Pages the job mapped are unmapped again if it fails or is cancelled, except
// those a live pinned view made meanwhile covers: they stay mapped (with partial contents) and are counted in
// pages_kept_by_views(). A job is registered in its pool (Pool::jobs) from construction until its rollback is
// done, so Pool::close and Slot::close can cancel it and wait for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "pool.h"

namespace ws {

struct Source {
  std::string path;   // file source when not empty
  uintptr_t ptr = 0;  // host buffer source otherwise (the caller keeps it alive until the job is joined)
  uint64_t src_offset = 0, slot_offset = 0, nbytes = 0;
  // Host checkpoint cache fill (a file source only): each piece is read from the file into fill_ptr + src_offset
  // (the cache entry mirrors the file byte for byte) and copied into the slot from there, so a piece is read
  // while earlier pieces are still being copied (other threads, async streams): the fill is pipelined.
  uintptr_t fill_ptr = 0;
  // The host memory copied from (ptr, or fill_ptr) is registered for DMA (cuda_host_register): copies go
  // straight from it (cuda: cuMemcpyHtoDAsync from the cache, no staging buffer, no CPU copy).
  bool pinned = false;
};

// chunk_bytes bounds: each piece costs a Piece and a trip through the copier loop, so a tiny chunk turns a large
// load into more pieces than memory holds (found in review: chunk_bytes=1 asked for a Piece per byte). Python
// (memory/pool.py) checks the minimum too.
constexpr uint64_t kMinChunkBytes = 1024;
constexpr uint64_t kMaxPieces = 1ull << 20;

class LoadJob {
 public:
  enum class State { Running, Done, Failed, Cancelled };
  // Validates everything, pins the destination pages and starts the threads; throws on bad arguments or when
  // the pool cannot hold the pages that are not mapped yet. Whatever it throws, the files it opened are closed.
  LoadJob(std::shared_ptr<Slot> slot, std::vector<Source> sources, int threads, uint64_t chunk_bytes);
  ~LoadJob();
  void cancel() {
    {
      std::lock_guard<std::mutex> g(m_);  // with m_: a copier between its predicate check and its wait cannot miss it
      cancel_ = true;
    }
    cv_.notify_all();
  }
  const Slot* slot() const { return slot_.get(); }
  // Waits up to timeout_s (< 0: forever); true when finished.
  bool wait_for(double timeout_s);
  void join();
  uint64_t done_bytes() const { return done_.load(); }
  uint64_t total_bytes() const { return total_; }
  State state();
  // Rethrows the failure (or a Cancelled error) of a finished job; returns the bytes loaded otherwise.
  uint64_t result();
  // 0 until the job has finished (the counts are final then); each takes m_.
  uint64_t pages_mapped_by_job();
  uint64_t pages_kept_by_views();

 private:
  struct Piece {
    size_t src;
    uint64_t src_offset, slot_offset, n;
    uint64_t ready_index;  // mapped_upto_ must exceed this (index into pages_)
  };
  void run();
  void mapper();
  void copier_loop();
  void fail(const Error& e);
  void finish();
  void rollback_locked();  // undo job_pages_ (pool.mu held, its pins gone): unmapped, kept for views, or handed on
  std::string kept_note() const;

  // The descriptors this job opened, each once (sources of one file share it), closed by finish() once the copiers
  // are joined (found in review: kept open until the job object went, which the engine keeps for the model's whole
  // life, so a deleted checkpoint's space was never freed). A member, so that a constructor that throws anything
  // (bad_alloc too) closes them (found in review: only Error did).
  struct OwnedFds {
    std::vector<int> fds;
    OwnedFds() = default;
    OwnedFds(const OwnedFds&) = delete;
    OwnedFds& operator=(const OwnedFds&) = delete;
    ~OwnedFds() { close_all(); }
    void close_all();
  };

  std::shared_ptr<Slot> slot_;
  // The slot's tag for messages, copied under pool.mu (the constructor, finish()): Slot.tag's setter rewrites it
  // under that mutex (found in review: read unlocked, the messages came out torn, half old tag, half new).
  std::string tag_;
  std::vector<Source> sources_;
  OwnedFds owned_fds_;
  std::vector<int> fds_;  // per source: its file's descriptor (in owned_fds_), or -1 for a buffer; read by the
                          // copiers only, so stale (closed) once finish() runs
  std::vector<uint64_t> pages_;  // slot pages touched, ascending
  std::vector<Piece> pieces_;
  std::vector<uint64_t> job_pages_;  // pages this job answers for (it mapped them, or an overlapping load that ended
                                     // before it handed them over): rolled back on failure
  uint64_t n_job_pages_ = 0, n_kept_pages_ = 0;
  int threads_;
  uint64_t total_ = 0;
  std::atomic<uint64_t> done_{0};
  std::atomic<uint64_t> mapped_upto_{0};
  std::atomic<size_t> next_piece_{0};
  std::atomic<bool> cancel_{false};
  std::mutex m_, join_m_;
  std::condition_variable cv_;
  State state_ = State::Running;
  std::unique_ptr<Error> error_;
  std::thread driver_;
};

}  // namespace ws
