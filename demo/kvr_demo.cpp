// kvr demo: the host side of a tensor-parallel engine's KV offload/reload cycle.
//
// A scheduler process creates the node's shared region; N worker processes (TP ranks) attach
// it, get one view per KV tensor, and write their slices of every block (as
// cudaMemcpyAsync from GPU would); the scheduler then checks the interleaved layout through
// its whole-row view. Defaults need no configuration:  kvr_demo [--workers N]
// [--blocks B] [--tensor-bytes T]  (T = bytes of one tensor of one block for one rank).
#include <kvr.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Options {
  uint32_t workers = 2;
  uint64_t blocks = 256;
  uint64_t tensor_bytes = 512 * 1024;  // one K or V tensor of one block, one rank
  uint32_t tensors = 2;                // K and V
};

struct WorkerReport {
  int32_t rank = -1;
  int32_t ok = 0;
  double attach_ms = 0, populate_ms = 0, write_s = 0;
  uint64_t bytes = 0;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

uint8_t pattern(uint64_t rank, uint64_t block, uint64_t tensor) {
  return static_cast<uint8_t>(1 + rank * 37 + block * 11 + tensor * 101);
}

kvr::RegionOptions region_options(const Options& o, const std::string& name, int32_t rank, uint32_t flags) {
  kvr::RegionOptions r;
  r.name = name;
  r.num_blocks = o.blocks;
  r.cpu_page_size = o.tensor_bytes * o.tensors;
  r.num_workers = o.workers;
  r.rank = rank;
  r.flags = flags;
  return r;
}

// One TP rank: attach, take views, write every block's slices.
WorkerReport run_worker(const Options& o, const std::string& name, int32_t rank) {
  WorkerReport rep;
  rep.rank = rank;
  kvr::Region region(region_options(o, name, rank, KVR_REGION_PIN_IF_AVAILABLE));  // attach only
  kvr_region_info info = region.info();
  rep.attach_ms = info.attach_ns / 1e6;
  rep.populate_ms = info.populate_ns / 1e6;
  std::vector<kvr::View> views;
  for (uint32_t t = 0; t < o.tensors; t++) views.push_back(region.create_view(o.tensor_bytes));
  std::vector<uint8_t> src(o.tensor_bytes);
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t b = 0; b < o.blocks; b++) {
    for (uint32_t t = 0; t < o.tensors; t++) {
      std::memset(src.data(), pattern(rank, b, t), src.size());  // the "GPU" block
      std::memcpy(views[t].block(b).data(), src.data(), src.size());
    }
  }
  rep.write_s = seconds_since(t0);
  rep.bytes = o.blocks * o.tensors * o.tensor_bytes;
  rep.ok = 1;
  return rep;
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto next = [&]() -> uint64_t { return i + 1 < argc ? std::strtoull(argv[++i], nullptr, 0) : 0; };
    if (a == "--workers") o.workers = static_cast<uint32_t>(next());
    else if (a == "--blocks") o.blocks = next();
    else if (a == "--tensor-bytes") o.tensor_bytes = next();
    else {
      std::fprintf(stderr, "usage: %s [--workers N] [--blocks B] [--tensor-bytes T]\n", argv[0]);
      return false;
    }
  }
  return o.workers > 0 && o.blocks > 0 && o.tensor_bytes > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) return 2;
  const std::string name = "demo_" + std::to_string(getpid());
  std::printf("kvr %s demo: %u TP workers, %llu blocks, %u tensors x %llu B per rank per block\n",
              kvr_version(), o.workers, static_cast<unsigned long long>(o.blocks), o.tensors,
              static_cast<unsigned long long>(o.tensor_bytes));
  try {
    // The scheduler side creates the region; it populates nothing itself.
    kvr::Region sched(region_options(o, name, KVR_RANK_SCHEDULER, KVR_REGION_CREATE));
    kvr_region_info si = sched.info();
    std::printf("\n[1] shared region /dev/shm/kvr_%s.mmap: %.1f MiB (row stride %llu B), created in %.1f ms\n",
                name.c_str(), si.data_bytes / 1048576.0, static_cast<unsigned long long>(si.row_stride),
                si.attach_ns / 1e6);

    // Fork the TP workers; each reports back through a pipe.
    int fds[2];
    if (pipe(fds) != 0) return 3;
    std::vector<pid_t> kids;
    for (uint32_t r = 0; r < o.workers; r++) {
      pid_t pid = fork();
      if (pid == 0) {
        close(fds[0]);
        WorkerReport rep;
        rep.rank = static_cast<int32_t>(r);
        try {
          rep = run_worker(o, name, static_cast<int32_t>(r));
        } catch (const kvr::Error& e) {
          std::fprintf(stderr, "rank %u: %s\n", r, e.what());
        }
        (void)!write(fds[1], &rep, sizeof rep);
        _exit(rep.ok ? 0 : 1);
      }
      kids.push_back(pid);
    }
    close(fds[1]);
    std::vector<WorkerReport> reports;
    WorkerReport rep;
    while (read(fds[0], &rep, sizeof rep) == static_cast<ssize_t>(sizeof rep)) reports.push_back(rep);
    close(fds[0]);
    int failed = 0;
    for (pid_t k : kids) {
      int st = 0;
      waitpid(k, &st, 0);
      failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    std::printf("[2] workers attached and wrote their slices through their views:\n");
    std::printf("    %-5s %10s %12s %10s %10s\n", "rank", "attach ms", "populate ms", "write ms", "GB/s");
    for (const auto& r : reports) {
      if (!r.ok) continue;
      std::printf("    %-5d %10.2f %12.2f %10.2f %10.2f\n", r.rank, r.attach_ms, r.populate_ms, r.write_s * 1e3,
                  r.bytes / r.write_s / 1e9);
    }
    if (failed) {
      std::fprintf(stderr, "%d worker(s) failed\n", failed);
      return 1;
    }

    // The scheduler checks every byte of the interleaved rows.
    kvr::View rows = sched.row_view();
    auto t0 = std::chrono::steady_clock::now();
    uint64_t bad = 0;
    for (uint64_t b = 0; b < o.blocks; b++) {
      const uint8_t* row = rows.block(b).data();
      for (uint32_t r = 0; r < o.workers; r++)
        for (uint32_t t = 0; t < o.tensors; t++) {
          const uint8_t* p = row + (r * o.tensors + t) * o.tensor_bytes;
          const uint8_t want = pattern(r, b, t);
          for (uint64_t i = 0; i < o.tensor_bytes; i++) bad += p[i] != want;
        }
    }
    std::printf("[3] scheduler verified the interleaved layout of %llu rows in %.1f ms: %s\n",
                static_cast<unsigned long long>(o.blocks), seconds_since(t0) * 1e3,
                bad ? "MISMATCH" : "every byte where expected");
    if (bad) return 1;
  } catch (const kvr::Error& e) {
    std::fprintf(stderr, "kvr demo failed: %s\n", e.what());
    return 1;
  }
  std::printf("\ndone: the last handle closed and removed the region file.\n");
  return 0;
}
