// kvr demo: the host side of a tensor-parallel engine's KV offload/reload cycle, through the
// installed package. Defaults need no configuration:
//   kvr_demo [--workers N] [--blocks B] [--tensor-bytes T] [--fs-root DIR] [--spill-dir DIR]
//
// [1] the scheduler creates the node's shared region (/dev/shm);
// [2] N forked TP workers attach it and write their K/V slices of every block through their
//     views (where an engine would cudaMemcpyAsync from GPU);
// [3] the scheduler checks the interleaved layout through its whole-row view;
// [4] every rank stores its blocks in an fs block store (shareable across instances/hosts);
// [5] half the rows spill to a local slot file and come back after a reopen;
// [6] a few rows are exported as a safetensors file;
// [7] the engine "restarts": the region is closed (the host KV cache is gone) and recreated;
// [8] every rank reloads its blocks from the fs store and checks every byte;
// [9] the tensor file is imported into the new region and checked.
#include <filesystem>
#include <optional>

#include "demo_util.hpp"
#include "disk_step.hpp"
#include "fs_step.hpp"
#include "tensors_step.hpp"

namespace {

using demo::Options;
using demo::RankReport;

// [2] One TP rank: attach, take one view per tensor, write every block's slices.
RankReport write_slices(const Options& o, int32_t rank) {
  RankReport rep;
  rep.rank = rank;
  kvr::Region region(demo::rank_options(o, rank));
  kvr_region_info info = region.info();
  rep.attach_ms = info.attach_ns / 1e6;
  rep.populate_ms = info.populate_ns / 1e6;
  std::vector<kvr::View> views;
  for (uint32_t t = 0; t < o.tensors; t++) views.push_back(region.create_view(o.tensor_bytes));
  std::vector<uint8_t> gpu(o.tensor_bytes);  // stands in for the GPU block
  auto t0 = std::chrono::steady_clock::now();
  for (uint64_t b = 0; b < o.blocks; b++)
    for (uint32_t t = 0; t < o.tensors; t++) {
      std::memset(gpu.data(), demo::pattern(rank, b, t), gpu.size());
      std::memcpy(views[t].block(b).data(), gpu.data(), gpu.size());
    }
  rep.seconds = demo::seconds_since(t0);
  rep.blocks = o.blocks * o.tensors;
  rep.bytes = rep.blocks * o.tensor_bytes;
  rep.ok = 1;
  return rep;
}

// [3] The scheduler checks every byte of the interleaved rows.
uint64_t check_rows(const Options& o, const kvr::Region& sched) {
  kvr::View rows = sched.row_view();
  uint64_t bad = 0;
  for (uint64_t b = 0; b < o.blocks; b++)
    for (uint32_t r = 0; r < o.workers; r++)
      for (uint32_t t = 0; t < o.tensors; t++) {
        const uint8_t* p = rows.block(b).data() + (r * o.tensors + t) * o.tensor_bytes;
        for (uint64_t i = 0; i < o.tensor_bytes; i++) bad += p[i] != demo::pattern(r, b, t);
      }
  return bad;
}

bool parse(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--workers" && has_value) o.workers = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 0));
    else if (a == "--blocks" && has_value) o.blocks = std::strtoull(argv[++i], nullptr, 0);
    else if (a == "--tensor-bytes" && has_value) o.tensor_bytes = std::strtoull(argv[++i], nullptr, 0);
    else if (a == "--fs-root" && has_value) o.fs_root = argv[++i];
    else if (a == "--spill-dir" && has_value) o.spill_dir = argv[++i];
    else {
      std::fprintf(stderr,
                   "usage: %s [--workers N] [--blocks B] [--tensor-bytes T] [--fs-root DIR] [--spill-dir DIR]\n",
                   argv[0]);
      return false;
    }
  }
  return o.workers > 0 && o.blocks > 0 && o.tensor_bytes > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (!parse(argc, argv, o)) return 2;
  o.name = "demo_" + std::to_string(getpid());
  const bool own_fs_root = o.fs_root.empty();
  if (own_fs_root) o.fs_root = "/var/tmp/kvr_demo_fs_" + std::to_string(getpid());
  std::printf("kvr %s demo: %u TP workers, %llu blocks, %u tensors x %llu B per rank per block\n\n", kvr_version(),
              o.workers, static_cast<unsigned long long>(o.blocks), o.tensors,
              static_cast<unsigned long long>(o.tensor_bytes));
  bool ok = true;
  try {
    // [1] The scheduler side creates the region; it populates nothing itself.
    std::optional<kvr::Region> sched;
    sched.emplace(demo::region_options(o, KVR_RANK_SCHEDULER, KVR_REGION_CREATE));
    kvr_region_info si = sched->info();
    std::printf("[1] shared region /dev/shm/kvr_%s.mmap: %.1f MiB (row stride %llu B), created in %.1f ms\n",
                o.name.c_str(), si.data_bytes / 1048576.0, static_cast<unsigned long long>(si.row_stride),
                si.attach_ns / 1e6);

    // [2] The TP workers attach and write their slices.
    auto reps = demo::per_rank(o.workers, [&](int32_t r) { return write_slices(o, r); });
    std::printf("[2] workers attached and wrote their slices through their views:\n");
    std::printf("    %-5s %10s %12s %10s %10s\n", "rank", "attach ms", "populate ms", "write ms", "GB/s");
    for (const auto& r : reps)
      std::printf("    %-5d %10.2f %12.2f %10.2f %10.2f\n", r.rank, r.attach_ms, r.populate_ms, r.seconds * 1e3,
                  r.bytes / r.seconds / 1e9);
    if (reps.size() != o.workers) throw std::runtime_error("a worker failed");

    auto t0 = std::chrono::steady_clock::now();
    const uint64_t bad = check_rows(o, *sched);
    std::printf("[3] scheduler verified the interleaved layout of %llu rows in %.1f ms: %s\n",
                static_cast<unsigned long long>(o.blocks), demo::seconds_since(t0) * 1e3,
                bad ? "MISMATCH" : "every byte where expected");
    ok = bad == 0;

    ok = demo::fs_store_all(o) && ok;                             // [4]
    ok = demo::disk_spill_and_reload(o, sched->row_view()) && ok;  // [5]
    const std::string tensor_file = demo::tensors_export(o, *sched, std::min<uint64_t>(o.blocks, 8));  // [6]

    // [7] "Engine restart": the last handle closes and the host KV cache is gone.
    sched.reset();
    sched.emplace(demo::region_options(o, KVR_RANK_SCHEDULER, KVR_REGION_CREATE));
    std::printf("[7] engine restart: the region was closed (file removed) and created anew, empty\n");

    ok = demo::fs_reload_all(o) && ok;                        // [8]
    ok = demo::tensors_import(o, *sched, tensor_file) && ok;  // [9]
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvr demo failed: %s\n", e.what());
    ok = false;
  }
  if (own_fs_root) {
    std::error_code ec;
    std::filesystem::remove_all(o.fs_root, ec);
  }
  std::printf("\n%s\n", ok ? "done: every tier returned exactly the bytes the workers wrote."
                            : "FAILED: see the messages above.");
  return ok ? 0 : 1;
}
