#include "errors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

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

}  // namespace ws
