// S3 object tier through the installed C ABI and kvr.hpp, against the S3 test server
// (scripts/seaweedfs.sh; its endpoint in KVR_S3_TEST_ENDPOINT, set by scripts/run-tests.sh):
// round trips, publish-once, async batches, stats, an unreachable endpoint. Whole engine
// keys, segment lists, per-key lookups and segmented item batches, with every bad input, are
// tested for this tier and the fs store alike in test_block_tiers.cpp.
#include <kvr.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "tier_checks.hpp"

namespace {

kvr_block_key key(uint64_t i) {
  kvr_block_key k;
  for (int b = 0; b < 8; b++) k.bytes[b] = static_cast<uint8_t>(i >> (8 * b));
  for (int b = 8; b < 16; b++) k.bytes[b] = static_cast<uint8_t>(0x5a ^ b ^ i);
  return k;
}

}  // namespace

TEST(Obj, StoreLoadDedupRemoveStats) {
  ENDPOINT_OR_SKIP(ep);
  kvr::ObjStore s(kvr_test::obj_test_options(ep, "basic"));
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
  kvr::ObjStore s(kvr_test::obj_test_options(ep, "batch"));
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
