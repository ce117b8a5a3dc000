// Demo step for tensor files: the scheduler exports a few rows as one safetensors file (any
// safetensors reader opens it), reads it back lazily, and imports it into the new region.
#pragma once

#include <string>
#include <vector>

#include "demo_util.hpp"

namespace demo {

/// Exports rows [0, n) of the scheduler's region; prints what the file holds.
inline std::string tensors_export(const Options& o, const kvr::Region& sched, uint64_t n) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/kvr_demo_" + std::to_string(getpid()) +
                           ".safetensors";
  std::vector<uint64_t> ids(n);
  for (uint64_t i = 0; i < n; i++) ids[i] = i;
  auto t0 = std::chrono::steady_clock::now();
  kvr::export_blocks(sched, ids.data(), ids.size(), path, KVR_TENSORS_ALIGN_4K);
  const double s = seconds_since(t0);
  kvr::TensorFile f(path);
  kvr_tensor_ref blocks = f.tensor("blocks");
  std::printf("[6] exported %llu rows to %s (%.2f GB/s); lazily reopened: %zu tensors, \"blocks\" is U8 [%llu, %llu], "
              "layout %s blocks x %s workers\n",
              static_cast<unsigned long long>(n), path.c_str(), n * blocks.shape[1] / s / 1e9, f.size(),
              static_cast<unsigned long long>(blocks.shape[0]), static_cast<unsigned long long>(blocks.shape[1]),
              f.metadata("kvr.num_blocks").c_str(), f.metadata("kvr.num_workers").c_str());
  std::printf("    python: from safetensors.numpy import load_file; load_file(\"%s\")[\"blocks\"]\n", path.c_str());
  (void)o;
  return path;
}

/// Imports the exported rows into `sched` and checks them against the pattern.
inline bool tensors_import(const Options& o, const kvr::Region& sched, const std::string& path) {
  const size_t n = kvr::import_blocks(sched, path);
  kvr::View rows = sched.row_view();
  uint64_t bad = 0;
  for (uint64_t b = 0; b < n; b++)
    for (uint32_t r = 0; r < o.workers; r++)
      for (uint32_t t = 0; t < o.tensors; t++) {
        const uint8_t* p = rows.block(b).data() + (r * o.tensors + t) * o.tensor_bytes;
        for (uint64_t i = 0; i < o.tensor_bytes; i++) bad += p[i] != pattern(r, b, t);
      }
  std::printf("[9] the new region imported %zu rows from the tensor file (checksums verified): %s\n", n,
              bad ? "MISMATCH" : "every byte where expected");
  std::remove(path.c_str());
  return bad == 0;
}

}  // namespace demo
