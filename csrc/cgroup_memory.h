// The memory this process's cgroup lets it take. /proc/meminfo's MemAvailable is the machine's: in a container
// whose memory limit is below it, a host pool between the two passed the pool's check and its fallocate was
// answered by the cgroup's OOM killer (SIGKILL, no message; found in review).
#pragma once

#include <cstdint>
#include <string>

namespace ws {

struct CgroupMemory {
  // The tightest memory limit over the process's cgroup and its ancestors, bytes; 0: none (or none readable).
  uint64_t limit_bytes = 0;
  // That limit less what the groups hold and cannot give back (their usage less their file cache), bytes.
  uint64_t room_bytes = 0;
  // The file the limit was read from (memory.max on cgroup v2, memory.stat's hierarchical limit on v1).
  std::string file;
};

// Reads `proc_dir`/cgroup and `proc_dir`/mountinfo (a process's /proc directory; tests pass a made-up one whose
// mountinfo points into a made-up hierarchy); v2 (memory.max up the tree) and v1 (the memory controller's
// hierarchical_memory_limit). Never throws: an unreadable hierarchy reads as no limit.
CgroupMemory cgroup_memory(const std::string& proc_dir = "/proc/self");

}  // namespace ws
