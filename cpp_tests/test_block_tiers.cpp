// Whole engine keys, segment lists, per-key lookups and segmented item batches of the two
// content-addressed block tiers, the fs store and the S3 object tier, through the installed C
// ABI and kvr.hpp: one typed test per behaviour, run for each tier (round trips, and every
// bad input: NULL, zero and over-long keys, NULL or zero-length segments, overflowing totals,
// bad items). The object tier runs against the S3 test server (scripts/seaweedfs.sh; its
// endpoint in KVR_S3_TEST_ENDPOINT, set by scripts/run-tests.sh) and is skipped without one;
// its checks of NULL handles need no server.
#include <kvr.hpp>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "tier_checks.hpp"

using kvr_test::kHexKey;
using kvr_test::pattern;

namespace {

/// The name of the running test, for a place of its own.
std::string test_name() {
  return ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

}  // namespace

// The tiers are outside the anonymous namespace: ctest names each typed test after its tier
// ("BlockTiers.PerKeyLookup<FsTier>").

/// The fs store: each test's handles share a fresh root.
struct FsTier {
  using Store = kvr::FsStore;
  using StoreItem = kvr_fs_store_segments_item;
  using LoadItem = kvr_fs_load_segments_item;
  static constexpr auto store_key = kvr_fs_store;
  static constexpr auto load_key = kvr_fs_load;
  static constexpr auto remove_key = kvr_fs_remove_key;
  static constexpr auto lookup = kvr_fs_lookup;
  static constexpr auto submit_store_items = kvr_fs_submit_store_items;
  static constexpr auto submit_load_items = kvr_fs_submit_load_items;
  static std::uint64_t corrupt(const kvr_fs_stats& s) { return s.corrupt_dropped; }

  struct Place {
    kvr_test::TempDir dir{"kvr_keys_test"};
    [[nodiscard]] std::optional<Store> open() const {
      kvr::FsOptions o;
      o.root = dir.path;
      o.ns = "keys-test";
      o.read_threads = 2;
      o.write_threads = 2;
      return Store(o);
    }
  };
};

/// The object tier: each test's handles share a prefix of their own; none without a server.
struct ObjTier {
  using Store = kvr::ObjStore;
  using StoreItem = kvr_obj_store_segments_item;
  using LoadItem = kvr_obj_load_segments_item;
  static constexpr auto store_key = kvr_obj_store_key;
  static constexpr auto load_key = kvr_obj_load_key;
  static constexpr auto remove_key = kvr_obj_remove_key;
  static constexpr auto lookup = kvr_obj_lookup;
  static constexpr auto submit_store_items = kvr_obj_submit_store_items;
  static constexpr auto submit_load_items = kvr_obj_submit_load_items;
  static std::uint64_t corrupt(const kvr_obj_stats& s) { return s.corrupt; }

  struct Place {
    std::string endpoint = kvr_test::s3_test_endpoint();
    kvr::ObjOptions options = kvr_test::obj_test_options(endpoint, test_name());
    [[nodiscard]] std::optional<Store> open() const {
      if (endpoint.empty()) return std::nullopt;
      return Store(options);
    }
  };
};

template <typename Tier>
class BlockTiers : public ::testing::Test {
 protected:
  typename Tier::Place place_;
};

using Tiers = ::testing::Types<FsTier, ObjTier>;
TYPED_TEST_SUITE(BlockTiers, Tiers);

/// Declares `var` as a handle on the test's place, or skips the test when the tier has none.
#define OPEN_OR_SKIP(var)                                                            \
  auto var##_opened = this->place_.open();                                           \
  if (!var##_opened) {                                                               \
    GTEST_SKIP() << "skipped: no S3 test server (run scripts/seaweedfs.sh)";         \
  }                                                                                  \
  auto& var = *var##_opened

TYPED_TEST(BlockTiers, WholeKeysAndSegmentsRoundTrip) {
  OPEN_OR_SKIP(s);
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
  // A different total is a layout mismatch; the block stays.
  const kvr::Segment short_seg[1] = {kvr::segment(out.data(), out.size() - 1)};
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH,
             TypeParam::load_key(s.get(), kvr::key(kHexKey), short_seg, 1));
  // A key differing in its last byte is another block.
  std::string other = kHexKey;
  other.back() = '1';
  EXPECT_FALSE(s.load(kvr::key(other), {halves, 2}));
  // A 16-byte key is the same block as the kvr_block_key of those bytes.
  kvr_block_key bk;
  for (int i = 0; i < 16; i++) bk.bytes[i] = static_cast<uint8_t>(0x40 + i);
  auto payload = pattern(9, 4096);
  s.store(bk, payload.data(), payload.size());
  std::vector<uint8_t> back(4096);
  const kvr::Segment one[1] = {kvr::segment(back.data(), back.size())};
  ASSERT_TRUE(s.load(kvr::key(bk), {one, 1}));
  EXPECT_EQ(back, payload);
  EXPECT_TRUE(s.remove_key(kvr::key(bk)));
  EXPECT_FALSE(s.contains(bk));
  EXPECT_TRUE(s.remove_key(kvr::key(kHexKey)));
  EXPECT_FALSE(s.remove_key(kvr::key(kHexKey)));
  const auto st = s.stats();
  EXPECT_EQ(st.stores, 2u);
  EXPECT_EQ(TypeParam::corrupt(st), 0u);
}

TYPED_TEST(BlockTiers, NullHandlesAreRejected) {
  // No handle is opened: the object tier needs no server for these.
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, TypeParam::store_key(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, TypeParam::load_key(nullptr, kvr::key("k"), seg, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, TypeParam::remove_key(nullptr, kvr::key("k")));
  const kvr_key one_key[1] = {kvr::key("k")};
  uint8_t present[1];
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             TypeParam::lookup(nullptr, one_key, 1, present, nullptr));
}

TYPED_TEST(BlockTiers, WholeKeyBadInputs) {
  OPEN_OR_SKIP(s);
  kvr_test::expect_bad_inputs([&](kvr_key k, const kvr_segment* segs, size_t n) {
    return TypeParam::store_key(s.get(), k, segs, n);
  });
  kvr_test::expect_bad_inputs([&](kvr_key k, const kvr_segment* segs, size_t n) {
    return TypeParam::load_key(s.get(), k, segs, n);
  });
  kvr_test::expect_remove_key_checks(TypeParam::remove_key, s.get());
  // The longest key is accepted.
  uint8_t b[8] = {};
  const kvr_segment seg[1] = {kvr::segment(b, 8)};
  const std::vector<uint8_t> longest(KVR_MAX_KEY_LEN, 4);
  EXPECT_KVR(KVR_OK, TypeParam::store_key(s.get(), kvr::key(longest), seg, 1));
  EXPECT_KVR(KVR_OK, TypeParam::load_key(s.get(), kvr::key(longest), seg, 1));
  EXPECT_EQ(s.stats().stores, 1u);  // nothing bad was stored
}

TYPED_TEST(BlockTiers, PerKeyLookup) {
  OPEN_OR_SKIP(s);
  auto data = pattern(1, 512);
  const kvr::Segment seg[1] = {kvr::segment(data.data(), data.size())};
  s.store(kvr::key("stored"), {seg, 1});
  kvr_test::expect_lookups(s, TypeParam::lookup, kvr::key("stored"));
  // A second handle on the same place has not seen the block: it asks the file system or
  // the server.
  OPEN_OR_SKIP(s2);
  const kvr_key keys[2] = {kvr::key("stored"), kvr::key("absent")};
  EXPECT_EQ(s2.lookup({keys, 2}).present, (std::vector<uint8_t>{1, 0}));
}

TYPED_TEST(BlockTiers, SegmentedItemBatches) {
  OPEN_OR_SKIP(s);
  auto k_part = pattern(2, 8192), v_part = pattern(3, 8192);
  const kvr::Segment kv[2] = {kvr::segment(k_part.data(), k_part.size()),
                              kvr::segment(v_part.data(), v_part.size())};
  const std::string keys[3] = {kHexKey, "page-1", "page-2"};
  std::vector<typename TypeParam::StoreItem> stores;
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
  std::vector<typename TypeParam::LoadItem> loads;
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
  const kvr_test::ItemBreakers breakers(k_part.data());
  for (size_t b = 0; b < kvr_test::ItemBreakers::kCount; b++) {
    SCOPED_TRACE("breaker " + std::to_string(b));
    auto bad = stores;
    breakers.apply(b, bad[1]);
    kvr_job* job = nullptr;
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               TypeParam::submit_store_items(s.get(), bad.data(), bad.size(), &job));
    EXPECT_EQ(job, nullptr);
    typename TypeParam::LoadItem load_bad;
    std::memcpy(&load_bad, &bad[1], sizeof load_bad);  // the same shape
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
               TypeParam::submit_load_items(s.get(), &load_bad, 1, &job));
    EXPECT_EQ(job, nullptr);
  }
  kvr_job* job = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             TypeParam::submit_store_items(s.get(), nullptr, 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             TypeParam::submit_store_items(s.get(), stores.data(), 0, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             TypeParam::submit_store_items(s.get(), stores.data(), 1, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             TypeParam::submit_load_items(nullptr, loads.data(), 1, &job));
  EXPECT_EQ(s.stats().stores, 3u);
}
