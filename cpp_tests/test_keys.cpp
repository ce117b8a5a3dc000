// Whole engine keys, segment lists, per-key lookups and the segmented item batches of the fs
// store and the slot file, through the installed C ABI and kvr.hpp: round trips, and every
// bad input (NULL, zero and over-long keys, NULL or zero-length segments, overflowing
// totals, bad items).
#include <kvr.hpp>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/kvr_keys_test_XXXXXX";
    char* p = mkdtemp(tmpl);
    if (!p) std::abort();
    path = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

std::vector<uint8_t> pattern(uint8_t seed, size_t len) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; i++) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

kvr::FsStore open_fs(const std::string& root) {
  kvr::FsOptions o;
  o.root = root;
  o.ns = "keys-test";
  o.read_threads = 2;
  o.write_threads = 2;
  return kvr::FsStore(o);
}

kvr::Disk open_disk(const std::string& path) {
  kvr::DiskOptions o;
  o.path = path;
  o.slot_size = 65536;
  o.num_slots = 8;
  o.io_threads = 2;
  return kvr::Disk(o);
}

// A SGLang-style key: 64 hex characters of a chained page hash.
const std::string kHexKey = "5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e";

/// Calls `call(key, segments, n)` with every bad key and segment list; each must be rejected
/// with KVR_ERR_INVALID_ARGUMENT before any I/O.
void expect_bad_inputs(const std::function<kvr_status(kvr_key, const kvr_segment*, size_t)>& call) {
  std::vector<uint8_t> buf(64, 1);
  const kvr_segment good[1] = {kvr::segment(buf.data(), buf.size())};
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr_key bad_keys[] = {kvr_key{nullptr, 4}, kvr::key("", 0), kvr::key(long_key)};
  for (const kvr_key& k : bad_keys) EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, good, 1));
  const kvr_key k = kvr::key(kHexKey);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, nullptr, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, good, 0));
  const kvr_segment null_seg[2] = {good[0], kvr_segment{nullptr, 16}};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, null_seg, 2));
  const kvr_segment empty_seg[2] = {good[0], kvr_segment{buf.data(), 0}};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, empty_seg, 2));
  // Lengths whose sum overflows (never dereferenced: rejected first).
  const kvr_segment huge[2] = {kvr_segment{buf.data(), SIZE_MAX / 2},
                               kvr_segment{buf.data(), SIZE_MAX / 2 + 2}};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, call(k, huge, 2));
}

}  // namespace

TEST(Keys, FsWholeKeysAndSegmentsRoundTrip) {
  TempDir d;
  auto fs = open_fs(d.path);
  // 64 layers of 1 KiB, stored gathered, loaded scattered over a different split.
  std::vector<std::vector<uint8_t>> layers;
  std::vector<kvr::Segment> segs;
  for (uint8_t l = 0; l < 64; l++) {
    layers.push_back(pattern(l, 1024));
    segs.push_back(kvr::segment(layers.back().data(), 1024));
  }
  fs.store(kvr::key(kHexKey), {segs.data(), segs.size()});
  std::vector<uint8_t> out(64 * 1024);
  const kvr::Segment halves[2] = {kvr::segment(out.data(), 1000),
                                  kvr::segment(out.data() + 1000, out.size() - 1000)};
  ASSERT_TRUE(fs.load(kvr::key(kHexKey), {halves, 2}));
  for (size_t l = 0; l < 64; l++)
    EXPECT_EQ(0, std::memcmp(out.data() + l * 1024, layers[l].data(), 1024)) << "layer " << l;
  // A different total is a layout mismatch; the block stays.
  const kvr::Segment short_seg[1] = {kvr::segment(out.data(), out.size() - 1)};
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_fs_load(fs.get(), kvr::key(kHexKey), short_seg, 1));
  // A key differing in its last byte is another block.
  std::string other = kHexKey;
  other.back() = '1';
  EXPECT_FALSE(fs.load(kvr::key(other), {halves, 2}));
  // A 16-byte key is the same block as the kvr_block_key of those bytes.
  kvr_block_key bk;
  for (int i = 0; i < 16; i++) bk.bytes[i] = static_cast<uint8_t>(0x40 + i);
  auto payload = pattern(9, 4096);
  fs.store(bk, payload.data(), payload.size());
  std::vector<uint8_t> back(4096);
  const kvr::Segment one[1] = {kvr::segment(back.data(), back.size())};
  ASSERT_TRUE(fs.load(kvr::key(bk), {one, 1}));
  EXPECT_EQ(back, payload);
  EXPECT_TRUE(fs.remove_key(kvr::key(bk)));
  EXPECT_FALSE(fs.contains(bk));
  EXPECT_TRUE(fs.remove_key(kvr::key(kHexKey)));
  EXPECT_FALSE(fs.remove_key(kvr::key(kHexKey)));
}

TEST(Keys, FsBadInputs) {
  TempDir d;
  auto fs = open_fs(d.path);
  expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_fs_store(fs.get(), k, s, n);
  });
  expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_fs_load(fs.get(), k, s, n);
  });
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_store(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_load(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_remove_key(fs.get(), kvr::key("", 0)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_remove_key(fs.get(), kvr_key{nullptr, 3}));
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_remove_key(fs.get(), kvr::key(long_key)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_remove_key(nullptr, kvr::key("k")));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_fs_remove_key(fs.get(), kvr::key("absent")));
  // The longest key is accepted.
  const std::vector<uint8_t> longest(KVR_MAX_KEY_LEN, 4);
  EXPECT_KVR(KVR_OK, kvr_fs_store(fs.get(), kvr::key(longest), seg, 1));
  EXPECT_KVR(KVR_OK, kvr_fs_load(fs.get(), kvr::key(longest), seg, 1));
}

TEST(Keys, FsLookup) {
  TempDir d;
  auto fs = open_fs(d.path);
  auto data = pattern(1, 512);
  const kvr::Segment seg[1] = {kvr::segment(data.data(), data.size())};
  fs.store(kvr::key("stored"), {seg, 1});
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr_key keys[] = {kvr::key("stored"), kvr::key("absent"), kvr::key("", 0),
                          kvr_key{nullptr, 5}, kvr::key(long_key)};
  auto p = fs.lookup({keys, 5});
  EXPECT_EQ(p.present, (std::vector<uint8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(p.hits, 1u);
  // A second handle on the same root has not seen the block: it asks the file system.
  auto fs2 = open_fs(d.path);
  EXPECT_EQ(fs2.lookup({keys, 2}).present, (std::vector<uint8_t>{1, 0}));
  uint8_t present[2];
  size_t hits = 7;
  EXPECT_KVR(KVR_OK, kvr_fs_lookup(fs.get(), nullptr, 0, nullptr, &hits));
  EXPECT_EQ(hits, 0u);
  EXPECT_KVR(KVR_OK, kvr_fs_lookup(fs.get(), keys, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_lookup(fs.get(), nullptr, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_lookup(fs.get(), keys, 2, nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_lookup(nullptr, keys, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_fs_lookup(fs.get(), keys, SIZE_MAX / 8, present, nullptr));
}

TEST(Keys, FsItemBatches) {
  TempDir d;
  auto fs = open_fs(d.path);
  auto k_part = pattern(2, 8192), v_part = pattern(3, 8192);
  const kvr::Segment kv[2] = {kvr::segment(k_part.data(), k_part.size()),
                              kvr::segment(v_part.data(), v_part.size())};
  const std::string keys[3] = {kHexKey, "page-1", "page-2"};
  std::vector<kvr_fs_store_segments_item> stores;
  for (const auto& k : keys) stores.push_back(kvr::fs_store_item(kvr::key(k), {kv, 2}));
  {
    kvr::Job job = fs.submit_store_items(stores.data(), stores.size());
    job.wait();
    for (size_t i = 0; i < 3; i++) {
      uint64_t bytes = 0;
      EXPECT_KVR(KVR_OK, job.item_status(i, &bytes));
      EXPECT_EQ(bytes, 16384u);
    }
  }
  std::vector<uint8_t> out(3 * 16384);
  std::vector<kvr::Segment> outs;
  std::vector<kvr_fs_load_segments_item> loads;
  for (size_t i = 0; i < 3; i++) outs.push_back(kvr::segment(out.data() + i * 16384, 16384));
  for (size_t i = 0; i < 3; i++) loads.push_back(kvr::fs_load_item(kvr::key(keys[i]), {&outs[i], 1}));
  loads.push_back(kvr::fs_load_item(kvr::key("absent"), {&outs[0], 1}));
  {
    kvr::Job job = fs.submit_load_items(loads.data(), loads.size());
    job.wait();
    for (size_t i = 0; i < 3; i++) EXPECT_KVR(KVR_OK, job.item_status(i));
    EXPECT_KVR(KVR_ERR_NOT_FOUND, job.item_status(3));
  }
  for (size_t i = 0; i < 3; i++) {
    EXPECT_EQ(0, std::memcmp(out.data() + i * 16384, k_part.data(), 8192));
    EXPECT_EQ(0, std::memcmp(out.data() + i * 16384 + 8192, v_part.data(), 8192));
  }
  // Bad items reject the whole batch, and no job is handed out.
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr::Segment null_seg[1] = {kvr_segment{nullptr, 8}};
  const kvr::Segment empty_seg[1] = {kvr::segment(k_part.data(), 0)};
  const kvr::Segment huge[2] = {kvr_segment{k_part.data(), SIZE_MAX / 2},
                                kvr_segment{k_part.data(), SIZE_MAX / 2 + 2}};
  std::vector<std::function<void(kvr_fs_store_segments_item&)>> breakers = {
      [](auto& it) { it.struct_size = 4; },
      [](auto& it) { it.key = kvr::key("", 0); },
      [](auto& it) { it.key = kvr_key{nullptr, 3}; },
      [&](auto& it) { it.key = kvr::key(long_key); },
      [](auto& it) { it.segments = nullptr; },
      [](auto& it) { it.num_segments = 0; },
      [&](auto& it) { it.segments = null_seg; it.num_segments = 1; },
      [&](auto& it) { it.segments = empty_seg; it.num_segments = 1; },
      [&](auto& it) { it.segments = huge; it.num_segments = 2; },
  };
  for (size_t b = 0; b < breakers.size(); b++) {
    SCOPED_TRACE("breaker " + std::to_string(b));
    auto bad = stores;
    breakers[b](bad[1]);
    kvr_job* job = nullptr;
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               kvr_fs_submit_store_items(fs.get(), bad.data(), bad.size(), &job));
    EXPECT_EQ(job, nullptr);
    kvr_fs_load_segments_item load_bad;
    std::memcpy(&load_bad, &bad[1], sizeof load_bad);  // the same shape
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_load_items(fs.get(), &load_bad, 1, &job));
    EXPECT_EQ(job, nullptr);
  }
  kvr_job* job = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_store_items(fs.get(), nullptr, 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_fs_submit_store_items(fs.get(), stores.data(), 0, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_fs_submit_store_items(fs.get(), stores.data(), 1, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_fs_submit_load_items(nullptr, loads.data(), 1, &job));
}

TEST(Keys, DiskWholeKeysAndSegments) {
  TempDir d;
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
  TempDir d;
  auto disk = open_disk(d.path + "/slots");
  expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_disk_write_segments(disk.get(), k, s, n, nullptr, 0);
  });
  expect_bad_inputs([&](kvr_key k, const kvr_segment* s, size_t n) {
    return kvr_disk_read_segments(disk.get(), k, s, n, nullptr, 0, nullptr);
  });
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_write_segments(nullptr, kvr::key("k"), seg, 1, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read_segments(nullptr, kvr::key("k"), seg, 1, nullptr, 0, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove_key(disk.get(), kvr::key("", 0)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove_key(disk.get(), kvr_key{nullptr, 3}));
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove_key(disk.get(), kvr::key(long_key)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove_key(nullptr, kvr::key("k")));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_disk_remove_key(disk.get(), kvr::key("absent")));
  // More than a slot holds.
  std::vector<uint8_t> big(65536 + 1);
  const kvr_segment too_big[1] = {kvr::segment(big.data(), big.size())};
  EXPECT_KVR(KVR_ERR_TOO_LARGE,
             kvr_disk_write_segments(disk.get(), kvr::key("k"), too_big, 1, nullptr, 0));
}

TEST(Keys, DiskLookup) {
  TempDir d;
  auto disk = open_disk(d.path + "/slots");
  auto data = pattern(6, 100);
  const kvr::Segment seg[1] = {kvr::segment(data.data(), data.size())};
  disk.write_segments(kvr::key(kHexKey), {seg, 1});
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr_key keys[] = {kvr::key(kHexKey), kvr::key("absent"), kvr::key("", 0),
                          kvr_key{nullptr, 5}, kvr::key(long_key)};
  auto p = disk.lookup({keys, 5});
  EXPECT_EQ(p.present, (std::vector<uint8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(p.hits, 1u);
  uint8_t present[2];
  size_t hits = 7;
  EXPECT_KVR(KVR_OK, kvr_disk_lookup(disk.get(), nullptr, 0, nullptr, &hits));
  EXPECT_EQ(hits, 0u);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_lookup(disk.get(), nullptr, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_lookup(disk.get(), keys, 2, nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_lookup(nullptr, keys, 2, present, nullptr));
}

TEST(Keys, DiskItemBatches) {
  TempDir d;
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
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr::Segment null_seg[1] = {kvr_segment{nullptr, 8}};
  const kvr::Segment empty_seg[1] = {kvr::segment(k_part.data(), 0)};
  const kvr::Segment huge[2] = {kvr_segment{k_part.data(), SIZE_MAX / 2},
                                kvr_segment{k_part.data(), SIZE_MAX / 2 + 2}};
  using Breaker = std::function<void(kvr_key&, const kvr_segment*&, size_t&, uint32_t&)>;
  std::vector<Breaker> breakers = {
      [](auto&, auto&, auto&, uint32_t& size) { size = 4; },
      [](kvr_key& k, auto&, auto&, auto&) { k = kvr::key("", 0); },
      [](kvr_key& k, auto&, auto&, auto&) { k = kvr_key{nullptr, 3}; },
      [&](kvr_key& k, auto&, auto&, auto&) { k = kvr::key(long_key); },
      [](auto&, const kvr_segment*& s, auto&, auto&) { s = nullptr; },
      [](auto&, auto&, size_t& n, auto&) { n = 0; },
      [&](auto&, const kvr_segment*& s, size_t& n, auto&) { s = null_seg; n = 1; },
      [&](auto&, const kvr_segment*& s, size_t& n, auto&) { s = empty_seg; n = 1; },
      [&](auto&, const kvr_segment*& s, size_t& n, auto&) { s = huge; n = 2; },
  };
  for (size_t b = 0; b < breakers.size(); b++) {
    SCOPED_TRACE("breaker " + std::to_string(b));
    auto w = writes;
    breakers[b](w[1].key, w[1].segments, w[1].num_segments, w[1].struct_size);
    kvr_job* job = nullptr;
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               kvr_disk_submit_write_items(disk.get(), w.data(), w.size(), &job));
    EXPECT_EQ(job, nullptr);
    auto r = reads;
    breakers[b](r[1].key, r[1].segments, r[1].num_segments, r[1].struct_size);
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
