// Shared pieces of the kvr demo: options, the per-rank fork helper, the data pattern.
#pragma once

#include <kvr.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace demo {

struct Options {
  uint32_t workers = 2;
  uint64_t blocks = 256;
  uint64_t tensor_bytes = 512 * 1024;  // one K or V tensor of one block, one rank
  uint32_t tensors = 2;                // K and V
  std::string name;                    // region name
  std::string fs_root;                 // fs store root; empty: a fresh dir under /var/tmp
  std::string spill_dir;               // slot file dir; empty: $TMPDIR or /tmp
};

/// What one rank process reports back to the scheduler through a pipe.
struct RankReport {
  int32_t rank = -1;
  int32_t ok = 0;
  int32_t direct = 0;
  uint64_t bytes = 0, blocks = 0, bad = 0;
  double seconds = 0, attach_ms = 0, populate_ms = 0;
};

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// The byte rank `rank` writes into tensor `tensor` of block `block` ("the GPU's KV data").
inline uint8_t pattern(uint64_t rank, uint64_t block, uint64_t tensor) {
  return static_cast<uint8_t>(1 + rank * 37 + block * 11 + tensor * 101);
}

inline kvr::RegionOptions region_options(const Options& o, int32_t rank, uint32_t flags) {
  kvr::RegionOptions r;
  r.name = o.name;
  r.num_blocks = o.blocks;
  r.cpu_page_size = o.tensor_bytes * o.tensors;
  r.num_workers = o.workers;
  r.rank = rank;
  r.flags = flags;
  return r;
}

/// A worker rank attaches (never creates) the scheduler's region.
inline kvr::RegionOptions rank_options(const Options& o, int32_t rank) {
  return region_options(o, rank, KVR_REGION_PIN_IF_AVAILABLE);
}

/// Forks one process per TP rank running `body(rank)`; collects their reports.
inline std::vector<RankReport> per_rank(uint32_t workers, const std::function<RankReport(int32_t)>& body) {
  int fds[2];
  std::vector<RankReport> out;
  if (pipe(fds) != 0) return out;
  std::vector<pid_t> kids;
  for (uint32_t r = 0; r < workers; r++) {
    pid_t pid = fork();
    if (pid == 0) {
      close(fds[0]);
      RankReport rep;
      rep.rank = static_cast<int32_t>(r);
      try {
        rep = body(static_cast<int32_t>(r));
      } catch (const kvr::Error& e) {
        std::fprintf(stderr, "rank %u: %s\n", r, e.what());
      }
      (void)!write(fds[1], &rep, sizeof rep);
      _exit(rep.ok ? 0 : 1);
    }
    kids.push_back(pid);
  }
  close(fds[1]);
  RankReport rep;
  while (read(fds[0], &rep, sizeof rep) == static_cast<ssize_t>(sizeof rep)) out.push_back(rep);
  close(fds[0]);
  for (pid_t k : kids) waitpid(k, nullptr, 0);
  return out;
}

/// Prints one line per rank and the aggregate; true if every rank succeeded with no mismatch.
inline bool print_ranks(const char* what, const std::vector<RankReport>& reps, uint32_t workers) {
  std::printf("    %-5s %8s %10s %10s %8s %s\n", "rank", "blocks", "MiB", "ms", "GB/s", "I/O");
  uint64_t total = 0;
  double slowest = 0;
  bool ok = reps.size() == workers;
  for (const auto& r : reps) {
    ok = ok && r.ok && r.bad == 0;
    total += r.bytes;
    slowest = r.seconds > slowest ? r.seconds : slowest;
    std::printf("    %-5d %8llu %10.1f %10.2f %8.2f %s%s\n", r.rank, static_cast<unsigned long long>(r.blocks),
                r.bytes / 1048576.0, r.seconds * 1e3, r.bytes / r.seconds / 1e9, r.direct ? "O_DIRECT" : "buffered",
                r.bad ? "  MISMATCH" : "");
  }
  if (slowest > 0) std::printf("    all ranks: %s %.2f GB/s\n", what, total / slowest / 1e9);
  return ok;
}

}  // namespace demo
