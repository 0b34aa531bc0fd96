// Typed errors of the memory core. Each carries the numbers behind it; bindings.cpp turns them into the
// classes of warmserve.errors (never abort/exit: every failure reaches Python as an exception).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

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
};

struct Error : std::runtime_error {
  ErrorKind kind;
  uint64_t asked_bytes = 0, free_bytes = 0, total_bytes = 0;  // OutOfMemory, MappingLimit
  int64_t mappings = 0, max_mappings = 0;                      // MappingLimit
  int64_t code = 0;                                            // Driver: CUresult or errno
  std::string name;                                            // Driver: CUDA_ERROR_... or ENOMEM
  Error(ErrorKind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

inline Error invalid(const std::string& msg) { return Error(ErrorKind::InvalidArgument, msg); }

std::string fmt_bytes(uint64_t n);
// errno as a DriverError ("mmap failed: ENOMEM (Cannot allocate memory)").
Error errno_error(const std::string& what, int err);

}  // namespace ws
