// Demo step for the disk slot file: rows that no longer fit the region spill to one
// preallocated slot file (a single batched submit, straight from the region: rows are
// page-aligned, so O_DIRECT needs no bounce buffer), the rows are reused, then the slot file is
// reopened (its index recovered from the file) and the spilled blocks come back, checked
// against fingerprints taken before the spill.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "demo_util.hpp"
#include "fs_step.hpp"

namespace demo {

/// FNV-1a over 64-bit words (rows are multiples of 8 bytes): a fingerprint of a block.
inline uint64_t fingerprint(const uint8_t* p, uint64_t n) {
  uint64_t h = 1469598103934665603ull;
  for (uint64_t i = 0; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 1099511628211ull;
  }
  return h;
}

/// Spills the first half of `rows` (scheduler's whole-row view) and brings it back.
inline bool disk_spill_and_reload(const Options& o, const kvr::View& rows) {
  const uint64_t row = rows.bytes_per_block();
  const uint64_t spill = rows.num_blocks() / 2;
  if (spill == 0) return true;
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = !o.spill_dir.empty() ? o.spill_dir : (tmp && *tmp ? tmp : "/tmp");
  const std::string path = dir + "/kvr_demo_" + std::to_string(getpid()) + ".slots";
  kvr::DiskOptions d;
  d.path = path;
  d.slot_size = row;
  d.num_slots = spill;
  d.io_threads = 4;
  std::vector<uint64_t> fp(spill), meta(spill);  // meta: per-block engine metadata (block id)
  std::vector<kvr_disk_write_item> w(spill);
  for (uint64_t b = 0; b < spill; b++) {
    fp[b] = fingerprint(rows.block(b).data(), row);
    meta[b] = b;
    w[b].key = block_key(b, ~0u);  // whole rows: a key of its own
    w[b].src = rows.block(b).data();
    w[b].len = row;
    w[b].meta = reinterpret_cast<const uint8_t*>(&meta[b]);
    w[b].meta_len = sizeof meta[b];
  }
  bool ok = true;
  try {
    double spill_s = 0;
    bool direct = false;
    {
      kvr::Disk disk(d);
      auto t0 = std::chrono::steady_clock::now();
      kvr::Job job = disk.submit_write(w.data(), w.size());
      job.wait();
      spill_s = seconds_since(t0);
      ok = job.poll().failed == 0;
      direct = disk.stats().direct_io;
    }
    std::printf("[5] a new request needs rows: %llu rows (%.1f MiB) spilled to the slot file %s: %.2f GB/s (%s)\n",
                static_cast<unsigned long long>(spill), spill * row / 1048576.0, path.c_str(),
                spill * row / spill_s / 1e9, direct ? "O_DIRECT" : "buffered");
    for (uint64_t b = 0; b < spill; b++) std::memset(rows.block(b).data(), 0xEE, row);  // rows reused

    kvr::Disk disk(d);  // reopen: the index is recovered from the file
    kvr_disk_stats st = disk.stats();
    std::vector<kvr_disk_read_item> r(spill);
    for (uint64_t b = 0; b < spill; b++) {
      r[b].key = w[b].key;
      r[b].dst = rows.block(b).data();
      r[b].dst_cap = row;
      r[b].meta_dst = reinterpret_cast<uint8_t*>(&meta[b]);
      r[b].meta_cap = sizeof meta[b];
      meta[b] = ~0ull;
    }
    auto t0 = std::chrono::steady_clock::now();
    kvr::Job job = disk.submit_read(r.data(), r.size());
    job.wait();
    const double reload_s = seconds_since(t0);
    uint64_t bad = job.poll().failed;
    for (uint64_t b = 0; b < spill; b++)
      bad += r[b].len != row || meta[b] != b || fingerprint(rows.block(b).data(), row) != fp[b];
    ok = ok && bad == 0;
    std::printf("    reopened it (%llu entries recovered in %.2f ms) and reloaded them into their rows: "
                "%.2f GB/s, %s\n",
                static_cast<unsigned long long>(st.recovered_entries), st.recovery_ns / 1e6,
                spill * row / reload_s / 1e9, bad ? "MISMATCH" : "every block intact");
  } catch (const kvr::Error& e) {
    std::fprintf(stderr, "disk step failed: %s\n", e.what());
    ok = false;
  }
  std::remove(path.c_str());
  return ok;
}

}  // namespace demo
