#include "errors.h"

#include <pthread.h>
#include <sys/resource.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace ws {

std::string fmt_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  int u = 0;
  while (v >= 1024 && u < 4) { v /= 1024; ++u; }
  char buf[64];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)n);
  else std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
  return buf;
}

Error errno_error(const std::string& what, int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char* nm = strerrorname_np(err);
#else
  const char* nm = nullptr;
#endif
  Error e(ErrorKind::Driver, what + ": " + (nm ? nm : "errno") + " (" + std::strerror(err) + ")");
  e.code = err;
  e.name = nm ? nm : "";
  return e;
}

Error limit_error(Error e, const char* limit, uint64_t value, const std::string& why, const char* ulimit,
                  const std::string& then) {
  e = reworded(e, std::string(e.what()) + ": " + why + ". Fix: raise the limit (`" + ulimit + "` in the shell that "
                  "starts the process, or resource.setrlimit(resource." + limit + ", ...) in it)" + then);
  e.limit = limit, e.limit_value = value;
  return e;
}

uint64_t soft_limit(int resource) {
  rlimit r{};
  return getrlimit(resource, &r) == 0 && r.rlim_cur != RLIM_INFINITY ? uint64_t(r.rlim_cur) : 0;
}

uint64_t vm_size_bytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmSize:", 0) == 0) return std::strtoull(line.c_str() + 7, nullptr, 10) * 1024;
  return 0;
}

namespace {

// The stack a new thread maps (glibc's default: RLIMIT_STACK's soft value at start, 2 MiB where unlimited), and
// its guard page; 8 MiB where the default cannot be read.
uint64_t thread_stack_bytes() {
  uint64_t bytes = 8ull << 20;
#if defined(__GLIBC__)
  pthread_attr_t attr;
  if (pthread_getattr_default_np(&attr) == 0) {
    size_t size = 0;
    if (pthread_attr_getstacksize(&attr, &size) == 0 && size) bytes = size;
    pthread_attr_destroy(&attr);
  }
#endif
  return bytes + 4096;
}

}  // namespace

Error thread_start_error(const std::string& what, int err, const std::string& why, const std::string& done,
                         const std::string& more_fix) {
  Error e = err ? errno_error(what, err) : Error(ErrorKind::Driver, what + " (" + why + ")");
  const uint64_t as_limit = soft_limit(RLIMIT_AS), vm = as_limit ? vm_size_bytes() : 0, stack = thread_stack_bytes();
  if (as_limit && vm && vm + stack > as_limit)
    return limit_error(e, "RLIMIT_AS", as_limit, "the process's address-space limit RLIMIT_AS is " +
                       fmt_bytes(as_limit) + " and its virtual size (VmSize) already " + fmt_bytes(vm) +
                       ", no room for a thread's stack of " + fmt_bytes(stack) + "; " + done, "ulimit -v unlimited",
                       more_fix);
  return reworded(e, std::string(e.what()) + "; " + done + ". Fix: raise the process's thread limit (ulimit -u, the "
                  "container's pids limit) or end idle threads" + more_fix);
}

}  // namespace ws
