#include "loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <system_error>

namespace ws {
namespace {

void pread_all(int fd, char* p, uint64_t off, uint64_t n) {
  while (n) {
    ssize_t r = ::pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw errno_error("pread", errno);
    if (r == 0) throw invalid("file ended " + std::to_string(n) + " bytes before the end of a source range");
    p += r, off += r, n -= r;
  }
}

std::string locked_tag(const Slot& slot) {
  std::lock_guard<std::mutex> g(slot.pool->mu);
  return slot.tag;
}

// A source file's descriptor, refused unless it is a regular file. O_NONBLOCK: a FIFO must not block the open (found
// in review: slot.load() hung for good in open(), before the job was registered for a cancel or a close to reach;
// a directory passed and failed later as a DriverError EISDIR). It is cleared again for the reads. The descriptor
// goes to `owned` at once, so whatever is thrown after the open closes it.
int open_regular(const std::string& path, size_t i, std::vector<int>& owned) {
  // open() reads up to the first NUL: "/a/b\0c" would open /a/b, another file than the one named (found in
  // review: it loaded the prefix's file). Slot.load refuses it first; this covers every other caller.
  if (path.find('\0') != std::string::npos)
    throw invalid("load source " + std::to_string(i) + ": the path has a NUL byte at " +
                  std::to_string(path.find('\0')) + " of its " + std::to_string(path.size()) +
                  " bytes, and names no file. Fix: the file's path without the NUL");
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    const std::string what = "load source " + std::to_string(i) + ": cannot open " + path;
    // What the path names (or fails to) is the caller's argument; ENXIO is a socket (open_regular refuses those)
    if (err == ENOENT || err == ENOTDIR || err == EACCES || err == ELOOP || err == ENAMETOOLONG || err == EISDIR ||
        err == ENXIO)
      throw invalid(what + ": " + std::strerror(err));
    // The rest is the process or the system, with the file maybe fine (found in review: EMFILE came back as
    // InvalidArgumentError, errno lost): a DriverError carrying the errno.
    Error e = errno_error(what, err);
    const char* fix = err == EMFILE   ? "close unused files or raise the process's open-file limit (ulimit -n)"
                      : err == ENFILE ? "close unused files or raise the system's limit (sysctl fs.file-max)"
                      : err == ENOMEM ? "free host memory"
                                      : "see the errno; the load can be tried again once that is resolved";
    Error with(e.kind, std::string(e.what()) + ". Fix: " + fix);
    with.code = e.code, with.name = e.name;
    throw with;
  }
  owned.push_back(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    throw errno_error("fstat of load source " + path, err);
  }
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISFIFO(st.st_mode)   ? "a FIFO"
                       : S_ISDIR(st.st_mode)  ? "a directory"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "a special file";
    throw invalid("load source " + std::to_string(i) + ": " + path + " is " + kind +
                  ", not a regular file. Fix: a checkpoint file path, or read the data into a buffer and load that");
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
    int err = errno;
    throw errno_error("fcntl of load source " + path, err);
  }
  return fd;
}

}  // namespace

void LoadJob::OwnedFds::close_all() {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

LoadJob::LoadJob(std::shared_ptr<Slot> slot, std::vector<Source> sources, int threads, uint64_t chunk_bytes)
    : slot_(std::move(slot)), sources_(std::move(sources)), threads_(std::max(1, threads)) {
  if (chunk_bytes < kMinChunkBytes)
    throw invalid("chunk_bytes=" + std::to_string(chunk_bytes) + " is below the minimum of " +
                  std::to_string(kMinChunkBytes) + " bytes (every chunk is a piece of work with its own bookkeeping). "
                  "Fix: chunk_bytes >= " + std::to_string(kMinChunkBytes) + "; the default is 8 MiB");
  tag_ = locked_tag(*slot_);
  uint64_t n_pieces = 0, asked = 0;  // counted before anything is allocated or opened
  for (const Source& s : sources_) {
    n_pieces += s.nbytes / chunk_bytes + (s.nbytes % chunk_bytes != 0);
    asked = asked + s.nbytes < asked ? UINT64_MAX : asked + s.nbytes;  // only for the message
    if (n_pieces > kMaxPieces) break;  // no overflow, however many sources
  }
  if (n_pieces > kMaxPieces)
    throw invalid("load into slot '" + tag_ + "' in chunks of " + fmt_bytes(chunk_bytes) + " is more than " +
                  std::to_string(kMaxPieces) + " pieces (" + fmt_bytes(asked) +
                  " or more). Fix: a larger chunk_bytes (" + fmt_bytes(asked / kMaxPieces + 1) + " or more), or "
                  "several loads");
  Pool& pool = *slot_->pool;
  const uint64_t pb = slot_->page_bytes();
  const uint64_t reserved = slot_->n_pages * pb;
  // Host memory for the bookkeeping (the pieces, the page list: 8 bytes a page) running out is a typed error;
  // the descriptors opened so far close with owned_fds_ whatever leaves this constructor.
  try {
    fds_.reserve(sources_.size());
    owned_fds_.fds.reserve(sources_.size());  // a descriptor is owned the moment it is opened: no push may throw
    pieces_.reserve(n_pieces);
    std::map<std::string, int> opened;  // path -> its descriptor: one per file
    // Open and check every source before anything is mapped.
    for (size_t i = 0; i < sources_.size(); ++i) {
      const Source& s = sources_[i];
      int fd = -1;
      if (!s.path.empty()) {
        auto it = opened.find(s.path);
        if (it != opened.end()) {
          fd = it->second;
        } else {
          fd = open_regular(s.path, i, owned_fds_.fds);
          opened[s.path] = fd;
        }
        struct stat st;
        // compared so that src_offset + nbytes cannot wrap past 2^64 (found in review: it passed, and failed later
        // as a driver error)
        if (::fstat(fd, &st) == 0 && (s.nbytes > uint64_t(st.st_size) || s.src_offset > uint64_t(st.st_size) - s.nbytes))
          throw invalid("load source " + std::to_string(i) + ": " + s.path + " has " + std::to_string(st.st_size) +
                        " bytes, the range ends at " + std::to_string(s.src_offset + s.nbytes));
      } else if (s.fill_ptr) {
        throw invalid("load source " + std::to_string(i) + ": a cache fill (fill_ptr) needs a file source");
      } else if (s.ptr == 0 && s.nbytes) {
        throw invalid("load source " + std::to_string(i) + ": null buffer");
      }
      fds_.push_back(fd);
      if (s.slot_offset > reserved || s.nbytes > reserved - s.slot_offset)
        throw invalid("load source " + std::to_string(i) + ": slot bytes [" + std::to_string(s.slot_offset) + ", " +
                      std::to_string(s.slot_offset + s.nbytes) + ") are outside slot '" + tag_ + "' (" +
                      std::to_string(reserved) + " bytes reserved)");
      total_ += s.nbytes;
      // Cut into pieces that copier threads take in slot order, each no larger than chunk_bytes.
      for (uint64_t o = 0; o < s.nbytes; o += chunk_bytes) {
        uint64_t n = std::min(chunk_bytes, s.nbytes - o);
        pieces_.push_back({i, s.src_offset + o, s.slot_offset + o, n, 0});
      }
    }
    std::sort(pieces_.begin(), pieces_.end(),
              [](const Piece& a, const Piece& b) { return a.slot_offset < b.slot_offset; });
    for (const Piece& p : pieces_)
      for (uint64_t pg = p.slot_offset / pb; pg <= (p.slot_offset + p.n - 1) / pb; ++pg) pages_.push_back(pg);
    std::sort(pages_.begin(), pages_.end());
    pages_.erase(std::unique(pages_.begin(), pages_.end()), pages_.end());
    for (Piece& p : pieces_) {
      uint64_t last = (p.slot_offset + p.n - 1) / pb;
      p.ready_index = uint64_t(std::lower_bound(pages_.begin(), pages_.end(), last) - pages_.begin());
    }
  } catch (const std::bad_alloc&) {
    Error e(ErrorKind::OutOfMemory, "load into slot '" + tag_ + "' of " + fmt_bytes(asked) + " in " +
                                        std::to_string(n_pieces) + " pieces: the host memory for its bookkeeping (" +
                                        fmt_bytes(n_pieces * sizeof(Piece)) + " of pieces, 8 bytes a page of the "
                                        "range) cannot be allocated. Fix: free host memory, or a larger chunk_bytes");
    e.asked_bytes = n_pieces * sizeof(Piece);
    throw e;
  }
  {
    std::lock_guard<std::mutex> g(pool.mu);
    slot_->check_open_locked();
    tag_ = slot_->tag;
    uint64_t missing = 0;
    for (uint64_t pg : pages_) missing += slot_->table[pg] < 0;
    if (missing > pool.free.size()) {
      Error e(ErrorKind::OutOfMemory,
              "load into slot '" + tag_ + "' needs " + std::to_string(missing) + " more pages (" +
                  fmt_bytes(missing * pb) + "), " + fmt_bytes(pool.free.size() * pb) + " of " +
                  fmt_bytes(pool.backend->total_pages() * pb) +
                  " free. Fix: unmap or close idle slots (pool.pages_by_tag()), or a larger capacity_bytes");
      e.asked_bytes = missing * pb;
      e.free_bytes = pool.free.size() * pb;
      e.total_bytes = pool.backend->total_pages() * pb;
      throw e;
    }
    // Pinned while the job runs: nobody can unmap or move a page under the copy.
    for (uint64_t pg : pages_) slot_->pin_locked(pg, 1, +1);
    pool.jobs.insert(this);
  }
  bool started = false;
  int err = 0;  // the errno of a std::system_error (EAGAIN under a pids or process limit)
  std::string why = "unknown error";
  try {
    driver_ = std::thread([this] { run(); });
    started = true;
  } catch (const std::system_error& e) {
    err = e.code().value(), why = e.what();
  } catch (const std::exception& e) {  // bad_alloc for the thread's state
    why = e.what();
  }
  if (started) return;
  {
    std::lock_guard<std::mutex> g(pool.mu);
    for (uint64_t pg : pages_) slot_->pin_locked(pg, 1, -1);
    // Pages an overlapping load handed it while it stood in pool.jobs are undone (or passed on) as its finish()
    // would have (found in review: a load whose thread could not start kept them mapped for good).
    n_job_pages_ = job_pages_.size();
    rollback_locked();
    pool.jobs.erase(this);
    pool.jobs_cv.notify_all();
    tag_ = slot_->tag;
  }
  // Typed, as the copier threads' failure (found in review: std::system_error reached Python as a bare
  // RuntimeError); the descriptors opened so far close with owned_fds_.
  throw thread_start_error("load into slot '" + tag_ + "' could not start its thread", err, why,
                           "nothing was loaded", ", then load again");
}

LoadJob::~LoadJob() {
  cancel();
  join();  // finish() ran: the copiers are done and the files closed
}

void LoadJob::join() {
  std::lock_guard<std::mutex> g(join_m_);
  if (driver_.joinable()) driver_.join();
}

bool LoadJob::wait_for(double timeout_s) {
  std::unique_lock<std::mutex> l(m_);
  auto finished = [&] { return state_ != State::Running; };
  if (timeout_s < 0) {
    cv_.wait(l, finished);
    return true;
  }
  return cv_.wait_for(l, std::chrono::duration<double>(timeout_s), finished);
}

LoadJob::State LoadJob::state() {
  std::lock_guard<std::mutex> g(m_);
  return state_;
}

uint64_t LoadJob::result() {
  join();
  std::lock_guard<std::mutex> g(m_);
  if (state_ == State::Failed) throw *error_;
  if (state_ == State::Cancelled) {
    Error e(ErrorKind::Cancelled, "load into slot '" + tag_ + "' was cancelled after " +
                                      std::to_string(done_.load()) + " of " + std::to_string(total_) +
                                      " bytes; of the " + std::to_string(n_job_pages_) +
                                      " pages it had mapped, " + kept_note());
    e.asked_bytes = total_;
    e.free_bytes = done_.load();
    throw e;
  }
  return total_;
}

// finish() makes both counts final (under pool.mu) before it sets state_ under m_, so a reader that sees the state
// final under m_ sees them final too. Found by ThreadSanitizer: read with no lock while finish()'s rollback changed
// them, a caller polling a cancelled job could read a count half-way through it.
uint64_t LoadJob::pages_mapped_by_job() {
  std::lock_guard<std::mutex> g(m_);
  return state_ == State::Running ? 0 : n_job_pages_;
}

uint64_t LoadJob::pages_kept_by_views() {
  std::lock_guard<std::mutex> g(m_);
  return state_ == State::Running ? 0 : n_kept_pages_;
}

std::string LoadJob::kept_note() const {
  uint64_t unmapped = n_job_pages_ - n_kept_pages_;
  if (!n_kept_pages_) return std::to_string(unmapped) + " were unmapped again";
  return std::to_string(unmapped) + " were unmapped again and " + std::to_string(n_kept_pages_) +
         " stay mapped, with partial contents, because live pinned views cover them (drop the views, then unmap)";
}

void LoadJob::fail(const Error& e) {
  std::lock_guard<std::mutex> g(m_);
  if (!error_) error_ = std::make_unique<Error>(e);
  cancel_ = true;
  cv_.notify_all();
}

void LoadJob::mapper() {
  Pool& pool = *slot_->pool;
  const uint64_t pb = slot_->page_bytes();
  // Small first batch so copying starts at once, then larger batches (fewer lock round trips).
  uint64_t batch = 1, max_batch = std::max<uint64_t>(1, (16ull << 20) / pb);
  size_t i = 0;
  while (i < pages_.size() && !cancel_) {
    size_t end = std::min(pages_.size(), i + batch);
    try {
      std::lock_guard<std::mutex> g(pool.mu);
      slot_->check_open_locked();
      size_t k = i;
      while (k < end) {
        if (slot_->table[pages_[k]] >= 0) { ++k; continue; }  // mapped already (by the caller or another thread)
        size_t m = k + 1;
        while (m < end && pages_[m] == pages_[m - 1] + 1 && slot_->table[pages_[m]] < 0) ++m;
        slot_->map_locked(pages_[k], m - k, /*populate=*/true);
        for (size_t q = k; q < m; ++q) job_pages_.push_back(pages_[q]);
        k = m;
      }
    } catch (const Error& e) {
      if (!cancel_) fail(e);  // cancelled meanwhile (Pool::close): a closed pool is no failure of the load
      return;
    } catch (const std::exception& e) {  // bad_alloc growing the page list: a failed load, not std::terminate
      if (!cancel_) fail(Error(ErrorKind::Driver, std::string("the load's mapping failed: ") + e.what()));
      return;
    }
    (void)pb;
    i = end;
    {
      std::lock_guard<std::mutex> g(m_);
      mapped_upto_ = i;
    }
    cv_.notify_all();
    batch = std::min(max_batch, batch * 2);
  }
}

void LoadJob::copier_loop() {
  std::unique_ptr<Copier> cp;
  try {
    cp = slot_->pool->backend->copier();
    for (;;) {
      size_t k = next_piece_++;
      if (k >= pieces_.size() || cancel_) break;
      const Piece& p = pieces_[k];
      {
        std::unique_lock<std::mutex> l(m_);
        cv_.wait(l, [&] { return mapped_upto_ > p.ready_index || cancel_; });
      }
      if (cancel_) break;
      const Source& s = sources_[p.src];
      uintptr_t dst = slot_->base + p.slot_offset;
      if (fds_[p.src] >= 0 && s.fill_ptr) {
        char* at = (char*)s.fill_ptr + p.src_offset;
        pread_all(fds_[p.src], at, p.src_offset, p.n);
        if (s.pinned) cp->from_pinned(dst, at, p.n);
        else cp->from_buffer(dst, at, p.n);
      } else if (fds_[p.src] >= 0) {
        cp->from_file(dst, fds_[p.src], p.src_offset, p.n);
      } else if (s.pinned) {
        cp->from_pinned(dst, (const char*)s.ptr + p.src_offset, p.n);
      } else {
        cp->from_buffer(dst, (const char*)s.ptr + p.src_offset, p.n);
      }
      done_ += p.n;
    }
    cp->finish();
  } catch (const Error& e) {
    fail(e);
  } catch (const std::exception& e) {
    fail(Error(ErrorKind::Driver, std::string("load copy failed: ") + e.what()));
  }
}

void LoadJob::run() {
  std::vector<std::thread> copiers;
  try {
    // No more copiers than pieces: the rest would find no piece and end at once (found in review: threads=10000
    // for a 10-byte load started 10000 threads, 1.06 s of it; under a thread or address-space limit it failed).
    const size_t n_copiers = std::min<size_t>(size_t(threads_), pieces_.size());
    for (size_t t = 0; t < n_copiers; ++t) copiers.emplace_back([this] { copier_loop(); });
  } catch (const std::exception& e) {
    // No thread to be had (EAGAIN under a pids or process limit, or for a stack past the address-space limit): the
    // load fails with the reason, and the copiers already started stop at the cancel (found in review:
    // std::system_error escaped this thread's function, and std::terminate ended the worker).
    auto sys = dynamic_cast<const std::system_error*>(&e);
    fail(thread_start_error("the load into slot '" + tag_ + "' could not start its copier threads", sys ?
                            sys->code().value() : 0, e.what(), "the load failed", ", or load with fewer threads"));
  }
  if (!cancel_) mapper();
  for (auto& t : copiers) t.join();
  finish();
}

void LoadJob::rollback_locked() {
  // Caller holds pool.mu, and this job's pins are gone.
  Pool& pool = *slot_->pool;
  // Roll back only the pages this job mapped, run by run, and never one a live pinned view covers (a view
  // made while the load ran): unmapping it would fault the view's next access. Those are kept and counted.
  // A page pinned by other running loads of the slot only (no view) goes to one of them, whose own end
  // undoes it if it fails too (found in review: two overlapping loads, both cancelled, left the first one's
  // pages mapped for good, "kept" for views that did not exist; the second mapped none of them).
  auto heir = [&](uint64_t pg) -> LoadJob* {
    LoadJob* first = nullptr;
    uint32_t loads = 0;
    for (LoadJob* j : pool.jobs) {
      if (j == this || j->slot_ != slot_ || !std::binary_search(j->pages_.begin(), j->pages_.end(), pg)) continue;
      ++loads;
      if (!first) first = j;
    }
    return loads == slot_->pins[pg] ? first : nullptr;
  };
  std::sort(job_pages_.begin(), job_pages_.end());
  size_t k = 0;
  while (k < job_pages_.size()) {
    uint64_t pg = job_pages_[k];
    if (slot_->table[pg] < 0) { ++k; continue; }
    if (slot_->pins[pg]) {
      if (LoadJob* h = heir(pg)) {
        h->job_pages_.push_back(pg);  // with pool.mu, as its mapper and its finish touch it
        --n_job_pages_;
      } else {
        ++n_kept_pages_;
      }
      ++k;
      continue;
    }
    size_t m = k + 1;
    while (m < job_pages_.size() && job_pages_[m] == job_pages_[m - 1] + 1 && slot_->table[job_pages_[m]] >= 0 &&
           !slot_->pins[job_pages_[m]])
      ++m;
    if (slot_->pinned_beside(pg, m - k) >= 0) {  // the run shares a driver mapping with a pinned page: kept
      n_kept_pages_ += m - k;
      k = m;
      continue;
    }
    try {
      slot_->unmap_locked(pg, m - k);
    } catch (const Error&) {  // left mapped: the slot stays consistent, the pages stay the slot's
    }
    k = m;
  }
}

void LoadJob::finish() {
  Pool& pool = *slot_->pool;
  // The copiers, the only readers of fds_, are joined (run()) and the mapper ran on this thread: the files close
  // now, before the state is final, so a caller that saw the job finished sees them closed, done or not.
  owned_fds_.close_all();
  bool ok;
  {
    std::lock_guard<std::mutex> g(m_);
    ok = !error_ && !cancel_;
    if (!ok && !error_ && done_ == total_) ok = true;  // cancelled after the last byte landed: it is done
  }
  if (!ok) pool.backend->drain_quietly();  // outside the mutex (Backend::drain)
  {
    std::lock_guard<std::mutex> g(pool.mu);
    for (uint64_t pg : pages_) slot_->pin_locked(pg, 1, -1);
    n_job_pages_ = job_pages_.size();
    if (!ok) {
      rollback_locked();
    }
    if (ok) pool.bytes_loaded += total_;
    {
      // The state is final before the job leaves pool.jobs, so whoever Pool::close or Slot::close woke sees it
      // finished (lock order: pool mu, then the job's m_).
      std::lock_guard<std::mutex> g2(m_);
      tag_ = slot_->tag;  // for result()'s message, the tag as the load ended
      if (error_ && n_kept_pages_) {  // say what was kept in the job's own error
        Error e = *error_;
        Error with(e.kind, std::string(e.what()) + "; of the " + std::to_string(n_job_pages_) +
                               " pages the load had mapped, " + kept_note());
        with.asked_bytes = e.asked_bytes, with.free_bytes = e.free_bytes, with.total_bytes = e.total_bytes;
        with.mappings = e.mappings, with.max_mappings = e.max_mappings, with.code = e.code, with.name = e.name;
        *error_ = with;
      }
      state_ = ok ? State::Done : (error_ ? State::Failed : State::Cancelled);
    }
    pool.jobs.erase(this);
    pool.jobs_cv.notify_all();
  }
  cv_.notify_all();
}

}  // namespace ws
