// The README's segmented-block example, compiled and run as a test (check_readme.cmake keeps
// the two equal).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

// BEGIN README
#include <kvr.hpp>

#include <cstdint>
#include <vector>

// A `layer_first` engine holds one buffer per layer: a block is the list of its layers'
// slices, gathered into one block file (or slot) on store and scattered back on load,
// zero-copy when every slice is 4096-aligned in address and length. The loads go out as one
// async batch: one item per block, each with its own segment list.
void segmented_example(kvr::FsStore& store, std::vector<std::vector<std::uint8_t>>& layers,
                       std::size_t block_bytes_per_layer, std::size_t num_blocks) {
  std::vector<std::vector<kvr::Segment>> segs(num_blocks);
  std::vector<std::string> keys;
  for (std::size_t b = 0; b < num_blocks; b++) {
    for (auto& layer : layers)  // this block's slice of every layer
      segs[b].push_back(kvr::segment(layer.data() + b * block_bytes_per_layer,
                                     block_bytes_per_layer));
    keys.push_back("block-" + std::to_string(b));
  }
  for (std::size_t b = 0; b < num_blocks; b++)
    store.store(kvr::key(keys[b]), {segs[b].data(), segs[b].size()});
  std::vector<kvr_fs_load_segments_item> items;
  for (std::size_t b = 0; b < num_blocks; b++)
    items.push_back(kvr::fs_load_item(kvr::key(keys[b]), {segs[b].data(), segs[b].size()}));
  kvr::Job job = store.submit_load_items(items.data(), items.size());
  job.wait();  // buffers are kvr's until here
  for (std::size_t b = 0; b < num_blocks; b++) kvr::check(job.item_status(b));
}
// END README

TEST(Readme, SegmentedExampleRuns) {
  char tmpl[] = "/tmp/kvr_readme_segs_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  {
    kvr::FsOptions o;
    o.root = tmpl;
    o.ns = "readme";
    kvr::FsStore store(o);
    std::vector<std::vector<std::uint8_t>> layers(8, std::vector<std::uint8_t>(4 * 4096, 3));
    segmented_example(store, layers, 4096, 4);
    EXPECT_EQ(store.stats().stores, 4u);
  }
  std::filesystem::remove_all(tmpl);
}
