// S3 object tier through the installed C ABI and kvr.hpp, against the S3 test server
// (scripts/seaweedfs.sh; its endpoint in KVR_S3_TEST_ENDPOINT, set by scripts/run-tests.sh):
// round trips, publish-once, async batches, stats, an unreachable endpoint; whole engine
// keys, segment lists, per-key lookups and segmented item batches with every bad input
// (NULL, zero and over-long keys, NULL or zero-length segments, overflowing totals, bad
// items).
#include <kvr.hpp>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

std::string endpoint_or_empty() {
  const char* e = getenv("KVR_S3_TEST_ENDPOINT");
  return e ? e : "";
}

#define ENDPOINT_OR_SKIP(var)                                                   \
  std::string var = endpoint_or_empty();                                       \
  if (var.empty()) {                                                           \
    GTEST_SKIP() << "skipped: no S3 test server (run scripts/seaweedfs.sh)"; \
  }

kvr_block_key key(uint64_t i) {
  kvr_block_key k;
  for (int b = 0; b < 8; b++) k.bytes[b] = static_cast<uint8_t>(i >> (8 * b));
  for (int b = 8; b < 16; b++) k.bytes[b] = static_cast<uint8_t>(0x5a ^ b ^ i);
  return k;
}

kvr::ObjOptions options(const std::string& endpoint, const char* what) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  kvr::ObjOptions o;
  o.url = "s3://kvr-test/cpp-" + std::string(what) + "-" + std::to_string(getpid()) + "-" +
          std::to_string(ts.tv_nsec);
  o.ns = "llama-test_tp1";
  o.endpoint = endpoint;
  o.concurrency = 8;
  o.request_timeout_ms = 10000;
  return o;
}

std::vector<uint8_t> pattern(uint8_t seed, size_t len) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; i++) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

// A SGLang-style key: 64 hex characters of a chained page hash.
const std::string kHexKey = "5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e";

/// Calls `call(key, segments, n)` with every bad key and segment list; each must be rejected
/// with KVR_ERR_INVALID_ARGUMENT before any request.
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

TEST(Obj, WholeKeysAndSegmentsRoundTrip) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "keys"));
  // 64 layers of 1 KiB, stored gathered, loaded scattered over a different split.
  std::vector<std::vector<uint8_t>> layers;
  std::vector<kvr::Segment> segs;
  for (uint8_t l = 0; l < 64; l++) {
    layers.push_back(pattern(l, 1024));
    segs.push_back(kvr::segment(layers.back().data(), 1024));
  }
  s.store(kvr::key(kHexKey), {segs.data(), segs.size()});
  std::vector<uint8_t> out(64 * 1024);
  const kvr::Segment halves[2] = {kvr::segment(out.data(), 1000),
                                  kvr::segment(out.data() + 1000, out.size() - 1000)};
  ASSERT_TRUE(s.load(kvr::key(kHexKey), {halves, 2}));
  for (size_t l = 0; l < 64; l++)
    EXPECT_EQ(0, std::memcmp(out.data() + l * 1024, layers[l].data(), 1024)) << "layer " << l;
  // A different total is a layout mismatch; the object stays.
  const kvr::Segment short_seg[1] = {kvr::segment(out.data(), out.size() - 1)};
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_obj_load_key(s.get(), kvr::key(kHexKey), short_seg, 1));
  // A key differing in its last byte is another block.
  std::string other = kHexKey;
  other.back() = '1';
  EXPECT_FALSE(s.load(kvr::key(other), {halves, 2}));
  // A 16-byte key is the same object as the kvr_block_key of those bytes.
  auto payload = pattern(9, 4096);
  s.store(key(7), payload.data(), payload.size());
  std::vector<uint8_t> back(4096);
  const kvr::Segment one[1] = {kvr::segment(back.data(), back.size())};
  kvr_block_key k7 = key(7);
  ASSERT_TRUE(s.load(kvr::key(k7), {one, 1}));
  EXPECT_EQ(back, payload);
  EXPECT_TRUE(s.remove_key(kvr::key(k7)));
  EXPECT_FALSE(s.contains(k7));
  EXPECT_TRUE(s.remove_key(kvr::key(kHexKey)));
  EXPECT_FALSE(s.remove_key(kvr::key(kHexKey)));
  kvr_obj_stats st = s.stats();
  EXPECT_EQ(st.stores, 2u);
  EXPECT_EQ(st.corrupt, 0u);
}

TEST(Obj, WholeKeyBadInputs) {
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  // A NULL handle needs no server.
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_store_key(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_load_key(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_remove_key(nullptr, kvr::key("k")));
  const kvr_key one_key[1] = {kvr::key("k")};
  uint8_t present[1];
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_lookup(nullptr, one_key, 1, present, nullptr));
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "bad"));
  expect_bad_inputs([&](kvr_key k, const kvr_segment* segs, size_t n) {
    return kvr_obj_store_key(s.get(), k, segs, n);
  });
  expect_bad_inputs([&](kvr_key k, const kvr_segment* segs, size_t n) {
    return kvr_obj_load_key(s.get(), k, segs, n);
  });
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_remove_key(s.get(), kvr::key("", 0)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_remove_key(s.get(), kvr_key{nullptr, 3}));
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_remove_key(s.get(), kvr::key(long_key)));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_obj_remove_key(s.get(), kvr::key("absent")));
  // The longest key is accepted.
  const std::vector<uint8_t> longest(KVR_MAX_KEY_LEN, 4);
  EXPECT_KVR(KVR_OK, kvr_obj_store_key(s.get(), kvr::key(longest), seg, 1));
  EXPECT_KVR(KVR_OK, kvr_obj_load_key(s.get(), kvr::key(longest), seg, 1));
  EXPECT_EQ(s.stats().stores, 1u);  // nothing bad reached the server
}

TEST(Obj, PerKeyLookup) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "lookup"));
  auto data = pattern(1, 512);
  const kvr::Segment seg[1] = {kvr::segment(data.data(), data.size())};
  s.store(kvr::key("stored"), {seg, 1});
  const std::vector<uint8_t> long_key(KVR_MAX_KEY_LEN + 1, 3);
  const kvr_key keys[] = {kvr::key("stored"), kvr::key("absent"), kvr::key("", 0),
                          kvr_key{nullptr, 5}, kvr::key(long_key)};
  auto p = s.lookup({keys, 5});
  EXPECT_EQ(p.present, (std::vector<uint8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(p.hits, 1u);
  uint8_t present[2];
  size_t hits = 7;
  EXPECT_KVR(KVR_OK, kvr_obj_lookup(s.get(), nullptr, 0, nullptr, &hits));
  EXPECT_EQ(hits, 0u);
  EXPECT_KVR(KVR_OK, kvr_obj_lookup(s.get(), keys, 2, present, nullptr));
  EXPECT_EQ(present[0], 1);
  EXPECT_EQ(present[1], 0);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_lookup(s.get(), nullptr, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_lookup(s.get(), keys, 2, nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_obj_lookup(s.get(), keys, SIZE_MAX / 8, present, nullptr));
}

TEST(Obj, SegmentedItemBatches) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "items"));
  auto k_part = pattern(2, 8192), v_part = pattern(3, 8192);
  const kvr::Segment kv[2] = {kvr::segment(k_part.data(), k_part.size()),
                              kvr::segment(v_part.data(), v_part.size())};
  const std::string keys[3] = {kHexKey, "page-1", "page-2"};
  std::vector<kvr_obj_store_segments_item> stores;
  for (const auto& k : keys) stores.push_back(kvr::fs_store_item(kvr::key(k), {kv, 2}));
  {
    kvr::Job job = s.submit_store_items(stores.data(), stores.size());
    job.wait(60000);
    for (size_t i = 0; i < 3; i++) {
      uint64_t bytes = 0;
      EXPECT_KVR(KVR_OK, job.item_status(i, &bytes));
      EXPECT_EQ(bytes, 16384u);
    }
  }
  std::vector<uint8_t> out(3 * 16384);
  std::vector<kvr::Segment> outs;
  std::vector<kvr_obj_load_segments_item> loads;
  for (size_t i = 0; i < 3; i++) outs.push_back(kvr::segment(out.data() + i * 16384, 16384));
  for (size_t i = 0; i < 3; i++) loads.push_back(kvr::fs_load_item(kvr::key(keys[i]), {&outs[i], 1}));
  loads.push_back(kvr::fs_load_item(kvr::key("absent"), {&outs[0], 1}));
  {
    kvr::Job job = s.submit_load_items(loads.data(), loads.size());
    job.wait(60000);
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
  std::vector<std::function<void(kvr_obj_store_segments_item&)>> breakers = {
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
               kvr_obj_submit_store_items(s.get(), bad.data(), bad.size(), &job));
    EXPECT_EQ(job, nullptr);
    kvr_obj_load_segments_item load_bad;
    std::memcpy(&load_bad, &bad[1], sizeof load_bad);  // the same shape
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_submit_load_items(s.get(), &load_bad, 1, &job));
    EXPECT_EQ(job, nullptr);
  }
  kvr_job* job = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_obj_submit_store_items(s.get(), nullptr, 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_obj_submit_store_items(s.get(), stores.data(), 0, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_obj_submit_store_items(s.get(), stores.data(), 1, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_obj_submit_load_items(nullptr, loads.data(), 1, &job));
  EXPECT_EQ(s.stats().stores, 3u);
}

TEST(Obj, StoreLoadDedupRemoveStats) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "basic"));
  std::vector<uint8_t> a(65536, 1), b(65536, 2), out(65536, 0);
  EXPECT_FALSE(s.contains(key(1)));
  s.store(key(1), a.data(), a.size());
  s.store(key(1), b.data(), b.size());  // dedup: the first writer's bytes stay
  ASSERT_TRUE(s.load(key(1), out.data(), out.size()));
  EXPECT_EQ(out, a);
  EXPECT_FALSE(s.load(key(2), out.data(), out.size()));
  try {
    (void)s.load(key(1), out.data(), 100);
    FAIL() << "a load of another length must throw";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_LAYOUT_MISMATCH);
  }
  kvr_block_key keys[3] = {key(1), key(2), key(1)};
  EXPECT_EQ(s.lookup_prefix(keys, 3), 1u);
  EXPECT_TRUE(s.remove(key(1)));
  EXPECT_FALSE(s.remove(key(1)));
  kvr_obj_stats st = s.stats();
  EXPECT_EQ(st.stores, 1u);
  EXPECT_EQ(st.dedup_hits, 1u);
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.removes, 1u);
  EXPECT_EQ(st.bytes_written, 65536u);
}

TEST(Obj, AsyncBatchesThroughJobs) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(options(ep, "batch"));
  const size_t n = 24, len = 65536 + 123;
  std::vector<std::vector<uint8_t>> src(n), dst(n);
  std::vector<kvr_obj_store_item> stores(n);
  std::vector<kvr_obj_load_item> loads(n);
  for (size_t i = 0; i < n; i++) {
    src[i].assign(len, static_cast<uint8_t>(i * 7 + 1));
    dst[i].assign(len, 0);
    stores[i] = {key(100 + i), src[i].data(), len};
    loads[i] = {key(100 + i), dst[i].data(), len};
  }
  {
    kvr::Job j = s.submit_store(stores.data(), n);
    j.wait(60000);
    kvr_job_progress p = j.poll();
    EXPECT_EQ(p.done, n);
    EXPECT_EQ(p.failed, 0u);
    uint64_t bytes = 0;
    EXPECT_EQ(j.item_status(3, &bytes), KVR_OK);
    EXPECT_EQ(bytes, len);
  }
  {
    kvr::Job j = s.submit_load(loads.data(), n);
    j.wait();
    EXPECT_EQ(j.poll().failed, 0u);
  }
  EXPECT_EQ(dst, src);
}

TEST(Obj, AnUnreachableEndpointIsUnavailableAtOnce) {
  // No server needed: nothing listens on the discard port.
  kvr::ObjOptions o;
  o.url = "s3://kvr-test/x";
  o.ns = "ns";
  o.endpoint = "http://127.0.0.1:9";
  try {
    kvr::ObjStore s(o);
    FAIL() << "open must fail";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_UNAVAILABLE);
    EXPECT_NE(std::string(e.what()).find("http://127.0.0.1:9"), std::string::npos) << e.what();
  }
  EXPECT_STREQ(kvr_status_str(KVR_ERR_UNAVAILABLE), "KVR_ERR_UNAVAILABLE");
}
