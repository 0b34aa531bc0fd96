// Typed errors of the memory core. Each carries the numbers behind it; bindings.cpp turns them into the
// classes of warmserve.errors (never abort/exit: every failure reaches Python as an exception).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ws {

enum class ErrorKind {
  InvalidArgument,
  OutOfMemory,
  MappingLimit,
  ViewsAlive,
  Closed,
  Driver,
  BackendUnavailable,
  Cancelled,
  Timeout,
  SlotUnusable,
};

struct Error : std::runtime_error {
  ErrorKind kind;
  uint64_t asked_bytes = 0, free_bytes = 0, total_bytes = 0;  // OutOfMemory, MappingLimit
  int64_t mappings = 0, max_mappings = 0;                      // MappingLimit
  int64_t code = 0;                                            // Driver: CUresult or errno
  std::string name;                                            // Driver: CUDA_ERROR_... or ENOMEM
  // A process limit (ulimit) that refused the call, and its soft value: the fields `limit` and `limit_value` of the
  // Python error, whatever its class (found in review: RLIMIT_AS, _FSIZE and _NOFILE came back as bare errnos).
  std::string limit;                                           // RLIMIT_AS, _FSIZE, _NOFILE, "cgroup memory"
  uint64_t limit_value = 0;
  // A multi-page backend operation that failed part way and could not be undone (cuda unmap/move): entry i is 1
  // where page i was done (unmapped, or moved), so the slot table can follow the pages. Empty: nothing was done.
  std::vector<uint8_t> page_done;
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

inline Error invalid(const std::string& msg) { return Error(ErrorKind::InvalidArgument, msg); }
// e with another message and every field kept (a caller adding what it was doing).
inline Error reworded(Error e, const std::string& msg) {
  static_cast<std::runtime_error&>(e) = std::runtime_error(msg);
  return e;
}

std::string fmt_bytes(uint64_t n);
// errno as a DriverError ("mmap failed: ENOMEM (Cannot allocate memory)").
Error errno_error(const std::string& what, int err);

// A process limit that refused the call: `e` with its name and value, and the message "<e>: <why>. Fix: raise the
// limit (`<ulimit>` in the shell ..., or resource.setrlimit(...) in it)<then>" (`then`: ", or <another fix>", ...).
Error limit_error(Error e, const char* limit, uint64_t value, const std::string& why, const char* ulimit,
                  const std::string& then);
// The soft value of a process limit (ulimit: RLIMIT_AS, ...); 0 where unlimited.
uint64_t soft_limit(int resource);
// The process's virtual size (VmSize, what RLIMIT_AS bounds); 0 where unreadable.
uint64_t vm_size_bytes();
// A thread that could not be started (`err`: the errno of std::system_error, 0 for another failure, told by `why`),
// as a DriverError "<what>: <errno>[: the limit]; <done>. Fix: <the fix><more_fix>" whose fix names the limit in
// the way: glibc reports a stack that the address-space limit leaves no room for as EAGAIN, the errno of a pids or
// process limit too (found in review: under `ulimit -v` a load was told to raise `ulimit -u`).
Error thread_start_error(const std::string& what, int err, const std::string& why, const std::string& done,
                         const std::string& more_fix);

}  // namespace ws
