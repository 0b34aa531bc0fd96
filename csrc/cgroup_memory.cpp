// cgroup_memory.h. Only the limit and the file cache are read: the cache (active and inactive file pages, not
// shmem, which the kernel keeps on the anonymous lists) is what the group's reclaim gives back before its OOM killer
// runs, so a pool refused here could not have been made; one allowed may still meet other processes' growth.
#include "cgroup_memory.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <vector>

namespace ws {
namespace {

// Limits at or past this are "no limit": v1 writes 2^63 rounded down to a page for unlimited.
constexpr uint64_t kNoLimit = uint64_t(1) << 62;

bool read_u64(const std::string& path, uint64_t* v) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s.empty() || s[0] < '0' || s[0] > '9') return false;  // "max" (v2 unlimited) included
  *v = std::strtoull(s.c_str(), nullptr, 10);
  return true;
}

// memory.stat's keys -> values (v1 and v2 write "key value" lines).
uint64_t stat_value(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  std::string k;
  uint64_t v;
  while (f >> k >> v)
    if (k == key) return v;
  return 0;
}

struct Mount {
  std::string root, point;
};

// The mount of a cgroup hierarchy: fstype "cgroup2", or "cgroup" with `option` among its super options.
bool find_mount(const std::string& proc_dir, bool v2, const std::string& option, Mount* m) {
  std::ifstream f(proc_dir + "/mountinfo");
  for (std::string line; std::getline(f, line);) {
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream pre(line.substr(0, dash)), post(line.substr(dash + 3));
    std::string id, parent, dev, root, point, fstype, source, opts;
    if (!(pre >> id >> parent >> dev >> root >> point) || !(post >> fstype >> source >> opts)) continue;
    bool match = v2 ? fstype == "cgroup2" : fstype == "cgroup" && ("," + opts + ",").find("," + option + ",") !=
                                                                      std::string::npos;
    if (match) {
      *m = {root, point};
      return true;
    }
  }
  return false;
}

// The group's directory: the mount point plus the group's path below the mount's root (a cgroup namespace's
// root is "/", a bind-mounted subtree's is its own path).
std::string group_dir(const Mount& m, std::string path) {
  bool under_root = path.compare(0, m.root.size(), m.root) == 0 &&
                    (path.size() == m.root.size() || path[m.root.size()] == '/');  // not "/a" of "/ab"
  if (m.root != "/" && under_root) path = path.substr(m.root.size());
  while (!path.empty() && path.back() == '/') path.pop_back();
  return m.point + (path.empty() || path[0] == '/' ? path : "/" + path);
}

uint64_t file_cache(const std::string& stat, bool v2) {
  return v2 ? stat_value(stat, "active_file") + stat_value(stat, "inactive_file")
            : stat_value(stat, "total_active_file") + stat_value(stat, "total_inactive_file");
}

void consider(CgroupMemory* out, uint64_t limit, uint64_t usage, uint64_t cache, const std::string& file) {
  if (!limit || limit >= kNoLimit) return;
  uint64_t held = usage > cache ? usage - cache : 0, room = limit > held ? limit - held : 0;
  if (!out->limit_bytes || room < out->room_bytes) *out = {limit, room, file};
}

}  // namespace

CgroupMemory cgroup_memory(const std::string& proc_dir) {
  CgroupMemory out;
  std::ifstream f(proc_dir + "/cgroup");
  std::string v2_path, v1_path;
  bool have_v2 = false, have_v1 = false;
  for (std::string line; std::getline(f, line);) {
    size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (line.compare(0, a, "0") == 0 && controllers.empty()) {
      v2_path = path, have_v2 = true;
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      v1_path = path, have_v1 = true;
    }
  }
  Mount m;
  if (have_v1 && find_mount(proc_dir, false, "memory", &m)) {
    std::string dir = group_dir(m, v1_path), stat = dir + "/memory.stat";
    uint64_t usage = 0;
    if (read_u64(dir + "/memory.usage_in_bytes", &usage))
      consider(&out, stat_value(stat, "hierarchical_memory_limit"), usage, file_cache(stat, false),
               stat + " (hierarchical_memory_limit)");
  }
  if (have_v2 && find_mount(proc_dir, true, "", &m)) {
    // v2 states no hierarchical limit: every group from the process's up to the mount's top is read.
    for (std::string dir = group_dir(m, v2_path); dir.size() >= m.point.size();) {
      uint64_t limit = 0, usage = 0;
      if (read_u64(dir + "/memory.max", &limit) && read_u64(dir + "/memory.current", &usage))
        consider(&out, limit, usage, file_cache(dir + "/memory.stat", true), dir + "/memory.max");
      if (dir.size() == m.point.size()) break;
      dir = dir.substr(0, dir.rfind('/'));
    }
  }
  return out;
}

}  // namespace ws
