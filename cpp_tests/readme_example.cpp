// The README's C++ example, compiled and run as a test (check_readme.cmake keeps the two equal).
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

// BEGIN README
#include <kvr.hpp>

#include <cstdio>
#include <cstring>

// Rank `rank` of a 2-way tensor-parallel engine: attach the node's shared region and get
// one strided view per KV tensor. Each view's block b is at base + b*row_stride; the
// pointers go straight to cudaMemcpyAsync (pinned when KVR_REGION_PIN is set).
int offload_example(const char* region_name, int rank) {
  try {
    kvr::RegionOptions opt;
    opt.name = region_name;          // file /dev/shm/kvr_<name>.mmap
    opt.num_blocks = 128;            // KV blocks the region holds
    opt.cpu_page_size = 2 * 65536;   // this worker's bytes of one block: K and V
    opt.num_workers = 2;
    opt.rank = rank;                 // or KVR_RANK_SCHEDULER for the whole-row view
    opt.flags = KVR_REGION_CREATE | KVR_REGION_PIN_IF_AVAILABLE;
    kvr::Region region(opt);

    kvr::View keys = region.create_view(65536);
    kvr::View values = region.create_view(65536);
    std::memset(keys.block(7).data(), 0x11, keys.bytes_per_block());  // "offload" block 7
    std::memset(values.block(7).data(), 0x22, values.bytes_per_block());
    std::printf("rank %d: row stride %llu B, pinned: %s\n", rank,
                static_cast<unsigned long long>(keys.row_stride()),
                region.info().pinned ? "yes" : "no");
    return 0;
  } catch (const kvr::Error& e) {  // status code + what failed and why
    std::fprintf(stderr, "kvr: %s\n", e.what());
    return 1;
  }
}
// END README

TEST(Readme, ExampleRuns) {
  const std::string name = "readme_" + std::to_string(getpid());
  EXPECT_EQ(offload_example(name.c_str(), 0), 0);
  EXPECT_EQ(offload_example(name.c_str(), 1), 0);
  EXPECT_EQ(offload_example("bad/name", 0), 1);
}
