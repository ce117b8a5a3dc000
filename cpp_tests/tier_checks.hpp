// Checks of whole engine keys, segment lists, per-key lookups and segmented item batches that
// every storage tier must pass alike (the fs store, the object tier, the slot file): each
// takes the tier's C function, so one body tests them all.
#pragma once

#include <kvr.hpp>
#include <time.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace kvr_test {

/// `len` bytes that differ with `seed`.
inline std::vector<uint8_t> pattern(uint8_t seed, size_t len) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; i++) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

/// A SGLang-style key: 64 hex characters of a chained page hash.
inline const std::string kHexKey =
    "5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e5f2b9c0e";

/// One past the longest key.
inline const std::vector<uint8_t> kTooLongKey = std::vector<uint8_t>(KVR_MAX_KEY_LEN + 1, 3);

/// Options of an object store under a prefix of its own (`what`, this process, the time), on
/// the S3 test server at `endpoint`.
inline kvr::ObjOptions obj_test_options(const std::string& endpoint, const std::string& what) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  kvr::ObjOptions o;
  o.url = "s3://kvr-test/cpp-" + what + "-" + std::to_string(getpid()) + "-" +
          std::to_string(ts.tv_nsec);
  o.ns = "llama-test_tp1";
  o.endpoint = endpoint;
  o.concurrency = 8;
  o.request_timeout_ms = 10000;
  return o;
}

/// Calls `call(key, segments, n)` with every bad key and segment list; each must be rejected
/// with KVR_ERR_INVALID_ARGUMENT before any I/O.
template <typename Call>
void expect_bad_inputs(const Call& call) {
  std::vector<uint8_t> buf(64, 1);
  const kvr_segment good[1] = {kvr::segment(buf.data(), buf.size())};
  const kvr_key bad_keys[] = {kvr_key{nullptr, 4}, kvr::key("", 0), kvr::key(kTooLongKey)};
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

/// `remove_key` (kvr_<tier>_remove_key) on handle `h` rejects bad keys and reports an
/// absent one.
template <typename H>
void expect_remove_key_checks(kvr_status (*remove_key)(const H*, kvr_key), const H* h) {
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, remove_key(h, kvr::key("", 0)));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, remove_key(h, kvr_key{nullptr, 3}));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, remove_key(h, kvr::key(kTooLongKey)));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, remove_key(h, kvr::key("absent")));
}

/// Per-key lookups of `store`, which holds `stored` (and not "absent"), through kvr.hpp and
/// through `lookup` (kvr_<tier>_lookup): bad keys are absent, bad arguments rejected.
template <typename Store, typename H>
void expect_lookups(const Store& store,
                    kvr_status (*lookup)(const H*, const kvr_key*, size_t, uint8_t*, size_t*),
                    kvr_key stored) {
  const kvr_key keys[] = {stored, kvr::key("absent"), kvr::key("", 0), kvr_key{nullptr, 5},
                          kvr::key(kTooLongKey)};
  auto p = store.lookup({keys, 5});
  EXPECT_EQ(p.present, (std::vector<uint8_t>{1, 0, 0, 0, 0}));
  EXPECT_EQ(p.hits, 1u);
  uint8_t present[2];
  size_t hits = 7;
  EXPECT_KVR(KVR_OK, lookup(store.get(), nullptr, 0, nullptr, &hits));
  EXPECT_EQ(hits, 0u);
  EXPECT_KVR(KVR_OK, lookup(store.get(), keys, 2, present, nullptr));
  EXPECT_EQ(present[0], 1);
  EXPECT_EQ(present[1], 0);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, lookup(store.get(), nullptr, 2, present, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, lookup(store.get(), keys, 2, nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             lookup(store.get(), keys, SIZE_MAX / 8, present, nullptr));
}

/// Every way to break the head every segmented item shares (`struct_size`, key, segment
/// list); each must reject the whole batch. `buf` is any valid buffer (never read).
class ItemBreakers {
 public:
  static constexpr size_t kCount = 9;
  explicit ItemBreakers(uint8_t* buf)
      : empty_seg_{kvr::segment(buf, 0)},
        huge_{kvr_segment{buf, SIZE_MAX / 2}, kvr_segment{buf, SIZE_MAX / 2 + 2}} {}
  /// Breaks `item` the `b`th way (b < kCount).
  template <typename Item>
  void apply(size_t b, Item& item) const {
    switch (b) {
      case 0: item.struct_size = 4; break;
      case 1: item.key = kvr::key("", 0); break;
      case 2: item.key = kvr_key{nullptr, 3}; break;
      case 3: item.key = kvr::key(kTooLongKey); break;
      case 4: item.segments = nullptr; break;
      case 5: item.num_segments = 0; break;
      case 6: item.segments = null_seg_; item.num_segments = 1; break;
      case 7: item.segments = empty_seg_; item.num_segments = 1; break;
      default: item.segments = huge_; item.num_segments = 2; break;
    }
  }

 private:
  const kvr_segment null_seg_[1] = {kvr_segment{nullptr, 8}};
  const kvr_segment empty_seg_[1];
  const kvr_segment huge_[2];
};

}  // namespace kvr_test
