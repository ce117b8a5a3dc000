// Whole engine keys, segment lists, per-key lookups and the segmented item batches of the slot
// file, through the installed C ABI and kvr.hpp: round trips, metadata, and every bad input
// (NULL, zero and over-long keys, NULL or zero-length segments, overflowing totals, bad
// items), with the checks the block tiers share (tier_checks.hpp; the fs store's and the
// object tier's are in test_block_tiers.cpp).
#include <kvr.hpp>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "tier_checks.hpp"

using kvr_test::kHexKey;
using kvr_test::pattern;

namespace {

kvr::Disk open_disk(const std::string& path) {
  kvr::DiskOptions o;
  o.path = path;
  o.slot_size = 65536;
  o.num_slots = 8;
  o.io_threads = 2;
  return kvr::Disk(o);
}

}  // namespace

TEST(Keys, DiskWholeKeysAndSegments) {
  kvr_test::TempDir d("kvr_keys_test");
  auto disk = open_disk(d.path + "/slots");
  auto a = pattern(4, 4096), b = pattern(5, 100);
  const kvr::Segment segs[2] = {kvr::segment(a.data(), a.size()), kvr::segment(b.data(), b.size())};
  disk.write_segments(kvr::key(kHexKey), {segs, 2}, "md", 2);
  std::vector<uint8_t> out(4196);
  const kvr::Segment outs[2] = {kvr::segment(out.data(), 4000),
                                kvr::segment(out.data() + 4000, 196)};
  char meta[8] = {};
  uint64_t meta_len = 0;
  ASSERT_TRUE(disk.read_segments(kvr::key(kHexKey), {outs, 2}, meta, sizeof meta, &meta_len));
  EXPECT_EQ(meta_len, 2u);
  EXPECT_EQ(std::string(meta, 2), "md");
  EXPECT_EQ(0, std::memcmp(out.data(), a.data(), 4096));
  EXPECT_EQ(0, std::memcmp(out.data() + 4096, b.data(), 100));
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_disk_read_segments(disk.get(), kvr::key(kHexKey), outs, 2,
                                                      reinterpret_cast<uint8_t*>(meta), 1,
                                                      &meta_len));
  EXPECT_EQ(meta_len, 2u);
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH,
             kvr_disk_read_segments(disk.get(), kvr::key(kHexKey), outs, 1, nullptr, 0, nullptr));
  EXPECT_FALSE(disk.read_segments(kvr::key("absent"), {outs, 2}));
  // Metadata limit: KVR_DISK_MAX_META less the key's length (16-byte keys: all of it).
  std::vector<uint8_t> big(KVR_DISK_MAX_META - kHexKey.size() + 1);
  EXPECT_KVR(KVR_ERR_TOO_LARGE, kvr_disk_write_segments(disk.get(), kvr::key(kHexKey), segs, 2,
                                                       big.data(), big.size()));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_write_segments(disk.get(), kvr::key(kHexKey), segs, 2, nullptr, 4));
  // 16-byte keys are the kvr_block_key entries.
  kvr_block_key bk;
  for (int i = 0; i < 16; i++) bk.bytes[i] = static_cast<uint8_t>(i);
  disk.write(bk, a.data(), a.size());
  std::vector<uint8_t> back(4096);
  const kvr::Segment one[1] = {kvr::segment(back.data(), back.size())};
  ASSERT_TRUE(disk.read_segments(kvr::key(bk), {one, 1}));
  EXPECT_EQ(back, a);
  EXPECT_TRUE(disk.remove_key(kvr::key(bk)));
  EXPECT_FALSE(disk.contains(bk));
  EXPECT_TRUE(disk.remove_key(kvr::key(kHexKey)));
  EXPECT_FALSE(disk.remove_key(kvr::key(kHexKey)));
}

TEST(Keys, DiskBadInputs) {
  kvr_test::TempDir d("kvr_keys_test");
  auto disk = open_disk(d.path + "/slots");
  kvr_test::expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_disk_write_segments(disk.get(), k, s, n, nullptr, 0);
  });
  kvr_test::expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_disk_read_segments(disk.get(), k, s, n, nullptr, 0, nullptr);
  });
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_write_segments(nullptr, kvr::key("k"), seg, 1, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read_segments(nullptr, kvr::key("k"), seg, 1, nullptr, 0, nullptr));
  kvr_test::expect_remove_key_checks(kvr_disk_remove_key, disk.get());
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove_key(nullptr, kvr::key("k")));
  // More than a slot holds.
  std::vector<uint8_t> big(65536 + 1);
  const kvr_segment too_big[1] = {kvr::segment(big.data(), big.size())};
  EXPECT_KVR(KVR_ERR_TOO_LARGE,
             kvr_disk_write_segments(disk.get(), kvr::key("k"), too_big, 1, nullptr, 0));
}

TEST(Keys, DiskLookup) {
  kvr_test::TempDir d("kvr_keys_test");
  auto disk = open_disk(d.path + "/slots");
  auto data = pattern(6, 100);
  const kvr::Segment seg[1] = {kvr::segment(data.data(), data.size())};
  disk.write_segments(kvr::key(kHexKey), {seg, 1});
  kvr_test::expect_lookups(disk, kvr_disk_lookup, kvr::key(kHexKey));
  const kvr_key keys[1] = {kvr::key(kHexKey)};
  uint8_t present[1];
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_lookup(nullptr, keys, 1, present, nullptr));
}

TEST(Keys, DiskItemBatches) {
  kvr_test::TempDir d("kvr_keys_test");
  auto disk = open_disk(d.path + "/slots");
  auto k_part = pattern(7, 4096), v_part = pattern(8, 4096);
  const kvr::Segment kv[2] = {kvr::segment(k_part.data(), k_part.size()),
                              kvr::segment(v_part.data(), v_part.size())};
  const std::string keys[2] = {kHexKey, "layer-first"};
  std::vector<kvr_disk_write_segments_item> writes;
  for (const auto& k : keys) writes.push_back(kvr::disk_write_item(kvr::key(k), {kv, 2}, "m1", 2));
  {
    kvr::Job job = disk.submit_write_items(writes.data(), writes.size());
    job.wait();
    for (size_t i = 0; i < 2; i++) {
      uint64_t bytes = 0;
      EXPECT_KVR(KVR_OK, job.item_status(i, &bytes));
      EXPECT_EQ(bytes, 8192u);
    }
  }
  std::vector<uint8_t> out(2 * 8192);
  char meta[2][4] = {};
  kvr::Segment outs[2] = {kvr::segment(out.data(), 8192), kvr::segment(out.data() + 8192, 8192)};
  std::vector<kvr_disk_read_segments_item> reads;
  for (size_t i = 0; i < 2; i++)
    reads.push_back(kvr::disk_read_item(kvr::key(keys[i]), {&outs[i], 1}, meta[i], 4));
  const kvr::Segment short_seg[1] = {kvr::segment(out.data(), 100)};
  reads.push_back(kvr::disk_read_item(kvr::key(keys[0]), {short_seg, 1}));
  reads.push_back(kvr::disk_read_item(kvr::key("absent"), {&outs[0], 1}));
  {
    kvr::Job job = disk.submit_read_items(reads.data(), reads.size());
    job.wait();
    EXPECT_KVR(KVR_OK, job.item_status(0));
    EXPECT_KVR(KVR_OK, job.item_status(1));
    EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, job.item_status(2));
    EXPECT_KVR(KVR_ERR_NOT_FOUND, job.item_status(3));
  }
  for (size_t i = 0; i < 2; i++) {
    EXPECT_EQ(reads[i].meta_len, 2u);
    EXPECT_EQ(std::string(meta[i], 2), "m1");
    EXPECT_EQ(0, std::memcmp(out.data() + i * 8192, k_part.data(), 4096));
    EXPECT_EQ(0, std::memcmp(out.data() + i * 8192 + 4096, v_part.data(), 4096));
  }
  // Bad items reject the whole batch, and no job is handed out.
  const kvr_test::ItemBreakers breakers(k_part.data());
  for (size_t b = 0; b < kvr_test::ItemBreakers::kCount; b++) {
    SCOPED_TRACE("breaker " + std::to_string(b));
    auto w = writes;
    breakers.apply(b, w[1]);
    kvr_job* job = nullptr;
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               kvr_disk_submit_write_items(disk.get(), w.data(), w.size(), &job));
    EXPECT_EQ(job, nullptr);
    auto r = reads;
    breakers.apply(b, r[1]);
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               kvr_disk_submit_read_items(disk.get(), r.data(), r.size(), &job));
    EXPECT_EQ(job, nullptr);
  }
  kvr_job* job = nullptr;
  auto w = writes;
  w[0].meta = nullptr;  // NULL metadata of non-zero length
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write_items(disk.get(), w.data(), 1, &job));
  auto r = reads;
  r[0].meta_dst = nullptr;  // NULL metadata destination of non-zero capacity
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_read_items(disk.get(), r.data(), 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write_items(disk.get(), nullptr, 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write_items(disk.get(), w.data(), 0, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_submit_write_items(disk.get(), writes.data(), 1, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_read_items(nullptr, r.data(), 1, &job));
  EXPECT_EQ(job, nullptr);
}
