// Demo steps for the fs block store: every rank stores its KV blocks (one async batch,
// zero-copy from the shared region, O_DIRECT where the file system allows), and after the
// engine restarts, reloads them into the new region and checks every byte.
#pragma once

#include <cstring>
#include <string>
#include <vector>

#include "demo_util.hpp"

namespace demo {

/// The block's 16-byte key: an engine uses its block hash; the demo derives one from
/// (block, tensor). The same key type addresses a block in the fs store and the slot file.
inline kvr_block_key block_key(uint64_t block, uint32_t tensor) {
  kvr_block_key k;
  uint64_t h = (block + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t(tensor) + 1) * 0xc2b2ae3d27d4eb4fULL;
  std::memcpy(k.bytes, &h, 8);
  for (int i = 0; i < 8; i++) k.bytes[8 + i] = static_cast<uint8_t>((block >> (8 * i)) ^ tensor);
  return k;
}

inline kvr::FsOptions fs_options(const Options& o, int32_t rank) {
  kvr::FsOptions f;
  f.root = o.fs_root;
  // The namespace names the model and KV layout, so another layout never reads these blocks.
  f.ns = "demo-w" + std::to_string(o.workers) + "-t" + std::to_string(o.tensors) + "-b" +
         std::to_string(o.tensor_bytes);
  f.rank = rank;  // each rank its own subdirectory: ranks never overwrite each other
  return f;
}

/// Each rank stores every block of each of its tensors into the fs store.
inline bool fs_store_all(const Options& o) {
  auto reps = per_rank(o.workers, [&](int32_t rank) {
    RankReport rep;
    rep.rank = rank;
    kvr::Region region(rank_options(o, rank));
    kvr::FsStore store(fs_options(o, rank));
    std::vector<kvr_fs_store_item> items;
    for (uint32_t t = 0; t < o.tensors; t++) {
      kvr::View v = region.create_view(o.tensor_bytes);
      for (uint64_t b = 0; b < o.blocks; b++)
        items.push_back({block_key(b, t), v.block(b).data(), static_cast<size_t>(o.tensor_bytes)});
    }
    auto t0 = std::chrono::steady_clock::now();
    kvr::Job job = store.submit_store(items.data(), items.size());
    job.wait();
    rep.seconds = seconds_since(t0);
    rep.ok = job.poll().failed == 0;
    rep.blocks = items.size();
    rep.bytes = items.size() * o.tensor_bytes;
    rep.direct = store.stats().direct_io;
    return rep;
  });
  std::printf("[4] each rank stored its KV blocks in the fs store %s/%s/r<rank> (one async batch per rank):\n",
              o.fs_root.c_str(), fs_options(o, 0).ns.c_str());
  return print_ranks("store", reps, o.workers);
}

/// Each rank loads its blocks back into the (new) region and checks every byte.
inline bool fs_reload_all(const Options& o) {
  auto reps = per_rank(o.workers, [&](int32_t rank) {
    RankReport rep;
    rep.rank = rank;
    kvr::Region region(rank_options(o, rank));
    kvr::FsStore store(fs_options(o, rank));
    std::vector<kvr::View> views;
    std::vector<kvr_fs_load_item> items;
    for (uint32_t t = 0; t < o.tensors; t++) {
      views.push_back(region.create_view(o.tensor_bytes));
      for (uint64_t b = 0; b < o.blocks; b++)
        items.push_back({block_key(b, t), views[t].block(b).data(), static_cast<size_t>(o.tensor_bytes)});
    }
    auto t0 = std::chrono::steady_clock::now();
    kvr::Job job = store.submit_load(items.data(), items.size());
    job.wait();
    rep.seconds = seconds_since(t0);
    rep.ok = job.poll().failed == 0;
    for (uint32_t t = 0; t < o.tensors; t++)
      for (uint64_t b = 0; b < o.blocks; b++) {
        const uint8_t want = pattern(static_cast<uint64_t>(rank), b, t);
        const uint8_t* p = views[t].block(b).data();
        for (uint64_t i = 0; i < o.tensor_bytes; i++) rep.bad += p[i] != want;
      }
    rep.blocks = items.size();
    rep.bytes = items.size() * o.tensor_bytes;
    rep.direct = store.stats().direct_io;
    return rep;
  });
  std::printf("[8] each rank reloaded its blocks from the fs store into the new region (checksums verified):\n");
  const bool ok = print_ranks("load", reps, o.workers);
  std::printf("    %s\n", ok ? "every byte restored" : "MISMATCH");
  return ok;
}

}  // namespace demo
