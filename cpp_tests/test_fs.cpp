// fs block store through the installed C ABI and kvr.hpp: round trips, async batches,
// corruption, two processes sharing a root, bad inputs.
#include <kvr.hpp>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.hpp"

using kvr_test::fork_child;
using kvr_test::wait_child;

namespace {

kvr_block_key key(uint64_t i) {
  kvr_block_key k;
  for (int b = 0; b < 8; b++) k.bytes[b] = static_cast<uint8_t>(i >> (8 * b));
  for (int b = 8; b < 16; b++) k.bytes[b] = static_cast<uint8_t>(0xa5 ^ b ^ i);
  return k;
}

std::vector<uint8_t> content(uint64_t i, size_t len) {
  std::vector<uint8_t> v(len);
  uint64_t x = i * 0x9e3779b97f4a7c15ULL + 1;
  for (size_t j = 0; j < len; j++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[j] = static_cast<uint8_t>(x);
  }
  return v;
}

kvr::FsOptions options(const std::string& root) {
  kvr::FsOptions o;
  o.root = root;
  o.ns = "llama-test_tp1";
  o.read_threads = 2;
  o.write_threads = 2;
  return o;
}

bool exists(const std::string& p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

}  // namespace

TEST(Fs, RoundTripsEveryLengthAndCountsStats) {
  kvr_test::TempDir d("kvr_fs_test");
  kvr::FsStore fs(options(d.path));
  const size_t lens[] = {1, 4095, 4096, 4097, 64 * 1024, 2 * 1024 * 1024 + 1};
  uint64_t i = 0;
  for (size_t len : lens) {
    auto src = content(i, len);
    fs.store(key(i), src.data(), len);
    fs.store(key(i), src.data(), len);  // deduplicated
    std::vector<uint8_t> dst(len + 1, 0xee);
    ASSERT_TRUE(fs.load(key(i), dst.data() + 1, len));  // unaligned destination
    EXPECT_EQ(0, std::memcmp(dst.data() + 1, src.data(), len)) << len;
    EXPECT_TRUE(fs.contains(key(i)));
    i++;
  }
  std::vector<uint8_t> miss(10);
  EXPECT_FALSE(fs.load(key(999), miss.data(), miss.size()));
  kvr_block_key prefix[3] = {key(0), key(1), key(999)};
  EXPECT_EQ(fs.lookup_prefix(prefix, 3), 2u);
  kvr_fs_stats s = fs.stats();
  EXPECT_EQ(s.blocks, 6u);
  EXPECT_EQ(s.stores, 6u);
  EXPECT_EQ(s.dedup_hits, 6u);
  EXPECT_EQ(s.hits, 6u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_TRUE(fs.remove(key(0)));
  EXPECT_FALSE(fs.remove(key(0)));
  EXPECT_FALSE(fs.contains(key(0)));
}

// Every write mode round-trips and reports itself; written in place, a block file is
// published with permission bits, and an unpublished one (mode 0) is no block.
TEST(Fs, WriteModesAreSelectableAndReported) {
  kvr_test::TempDir d("kvr_fs_test");
  const uint32_t modes[] = {KVR_FS_WRITE_AUTO, KVR_FS_WRITE_NAMED_TEMP, KVR_FS_WRITE_IN_PLACE};
  for (uint32_t mode : modes) {
    kvr::FsOptions o = options(d.path);
    o.ns = "mode-" + std::to_string(mode);
    o.write_mode = mode;
    kvr::FsStore fs(o);
    auto src = content(mode, 70000);
    fs.store(key(1), src.data(), src.size());
    std::vector<uint8_t> dst(src.size());
    ASSERT_TRUE(fs.load(key(1), dst.data(), dst.size()));
    EXPECT_EQ(dst, src);
    kvr_fs_stats s = fs.stats();
    // A local file system has O_TMPFILE: AUTO picks unnamed temp files there.
    uint32_t want = mode == KVR_FS_WRITE_AUTO ? KVR_FS_WRITE_UNNAMED_TEMP : mode;
    EXPECT_EQ(s.write_mode, want) << mode;
    EXPECT_EQ(s.unnamed_temp_files, want == KVR_FS_WRITE_UNNAMED_TEMP);
    struct stat st;
    ASSERT_EQ(0, lstat(fs.block_path(key(1)).c_str(), &st));
    EXPECT_NE(st.st_mode & 07777, 0u) << "published";
    if (mode == KVR_FS_WRITE_IN_PLACE) {
      // What a writer killed before its fchmod leaves (its header names no live writer).
      std::string p = fs.block_path(key(2));
      std::ofstream(p) << "partial";
      ASSERT_EQ(0, chmod(p.c_str(), 0));
      EXPECT_FALSE(fs.contains(key(2)));
      std::vector<uint8_t> miss(100);
      EXPECT_FALSE(fs.load(key(2), miss.data(), miss.size()));
      EXPECT_TRUE(exists(p)) << "a miss, not a corrupt block to remove";
    }
  }
}

TEST(Fs, AsyncBatchesStoreAndLoad) {
  kvr_test::TempDir d("kvr_fs_test");
  kvr::FsStore fs(options(d.path));
  const size_t n = 32, len = 64 * 1024 + 7;
  std::vector<std::vector<uint8_t>> src, dst(n + 1, std::vector<uint8_t>(len));
  std::vector<kvr_fs_store_item> stores;
  std::vector<kvr_fs_load_item> loads;
  for (size_t i = 0; i < n; i++) src.push_back(content(100 + i, len));
  for (size_t i = 0; i < n; i++) stores.push_back({key(100 + i), src[i].data(), len});
  for (size_t i = 0; i <= n; i++) loads.push_back({key(100 + i), dst[i].data(), len});
  {
    kvr::Job job = fs.submit_store(stores.data(), n);
    job.wait(10000);
    kvr_job_progress p = job.poll();
    EXPECT_EQ(p.done, n);
    EXPECT_EQ(p.failed, 0u);
    uint64_t bytes = 0;
    EXPECT_KVR(KVR_OK, job.item_status(0, &bytes));
    EXPECT_EQ(bytes, len);
  }
  {
    kvr::Job job = fs.submit_load(loads.data(), n + 1);  // the last key does not exist
    job.wait();
    EXPECT_EQ(job.poll().failed, 1u);
    EXPECT_EQ(job.item_status(n), KVR_ERR_NOT_FOUND);
  }
  for (size_t i = 0; i < n; i++) EXPECT_EQ(src[i], dst[i]) << i;
  // Freeing a running job waits for it: the buffers stay valid until then.
  kvr_job* raw = nullptr;
  ASSERT_KVR(KVR_OK, kvr_fs_submit_load(fs.get(), loads.data(), n, &raw));
  kvr_job_free(raw);
}

TEST(Fs, CorruptBlockIsRemovedAndReported) {
  kvr_test::TempDir d("kvr_fs_test");
  kvr::FsStore fs(options(d.path));
  const size_t len = 10000;
  auto src = content(1, len);
  fs.store(key(1), src.data(), len);
  const std::string p = fs.block_path(key(1));
  ASSERT_TRUE(exists(p));
  {
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 + 500);
    char c = static_cast<char>(src[500] ^ 0xff);
    f.write(&c, 1);
  }
  std::vector<uint8_t> dst(len);
  const kvr_block_key k1 = key(1);
  EXPECT_KVR(KVR_ERR_CORRUPT, kvr_load_block(fs.get(), &k1, dst.data(), len));
  EXPECT_NE(std::string(kvr_last_error_message()).find(p), std::string::npos);
  EXPECT_FALSE(exists(p));
  EXPECT_EQ(fs.stats().corrupt_dropped, 1u);
  EXPECT_FALSE(fs.load(key(1), dst.data(), len));
}

TEST(Fs, TwoProcessesShareARoot) {
  kvr_test::TempDir d("kvr_fs_test");
  const size_t len = 128 * 1024;
  pid_t kid = fork_child([&] {
    kvr::FsStore fs(options(d.path));
    for (uint64_t i = 0; i < 16; i++) {
      auto v = content(i, len);
      fs.store(key(i), v.data(), len);
    }
    return 0;
  });
  ASSERT_EQ(wait_child(kid), 0);
  kvr::FsStore fs(options(d.path));
  EXPECT_EQ(fs.stats().blocks, 16u);  // rebuilt by the scan at open
  std::vector<uint8_t> dst(len);
  for (uint64_t i = 0; i < 16; i++) {
    ASSERT_TRUE(fs.load(key(i), dst.data(), len));
    EXPECT_EQ(dst, content(i, len));
  }
}

TEST(Fs, RanksAndNamespacesAreSeparate) {
  kvr_test::TempDir d("kvr_fs_test");
  auto o = options(d.path);
  o.rank = 0;
  kvr::FsStore r0(o);
  o.rank = 1;
  kvr::FsStore r1(o);
  uint8_t b = 7;
  r0.store(key(1), &b, 1);
  EXPECT_TRUE(r0.contains(key(1)));
  EXPECT_FALSE(r1.contains(key(1)));
  EXPECT_NE(r0.block_path(key(1)).find("/r0/"), std::string::npos);
}

TEST(Fs, BadInputsAreRejected) {
  kvr_test::TempDir d("kvr_fs_test");
  kvr_fs_config c;
  ASSERT_KVR(KVR_OK, kvr_fs_config_default(&c));
  EXPECT_EQ(c.read_threads, 8u);
  EXPECT_EQ(c.write_threads, 8u);
  EXPECT_TRUE(c.verify);
  EXPECT_EQ(c.rank, KVR_FS_NO_RANK);
  kvr_fs* fs = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_config_default(nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(nullptr, &fs));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, &fs));  // root and namespace NULL
  c.root = d.path.c_str();
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, &fs));  // namespace NULL
  for (const char* bad : {"", "a/b", "..", "x/../y", ".hidden"}) {
    c.namespace_name = bad;
    EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, &fs));
    EXPECT_NE(std::string(kvr_last_error_message()).find("namespace"), std::string::npos);
  }
  c.namespace_name = "ns";
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, nullptr));
  kvr_fs_config b = c;
  b.direct_io = 9;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  b = c;
  b.durability = 9;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  b = c;
  b.rank = -5;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  b = c;
  b.write_threads = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  EXPECT_EQ(c.write_mode, KVR_FS_WRITE_AUTO);
  b = c;
  b.write_mode = 4;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  EXPECT_NE(std::string(kvr_last_error_message()).find("write_mode"), std::string::npos);
  b = c;
  b.struct_size = 4;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&b, &fs));
  EXPECT_EQ(fs, nullptr);  // outputs are written only on success
  ASSERT_KVR(KVR_OK, kvr_fs_open(&c, &fs));

  const kvr_block_key k = key(1);
  uint8_t buf[64] = {1};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block(nullptr, &k, buf, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block(fs, nullptr, buf, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block(fs, &k, nullptr, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block(fs, &k, buf, 0));
  const uint64_t shape[2] = {4, 4};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block_tensor(fs, &k, buf, 64, "F16", shape, 2));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block_tensor(fs, &k, buf, 64, "Q4", shape, 2));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block_tensor(fs, &k, buf, 64, nullptr, shape, 2));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_store_block_tensor(fs, &k, buf, 64, "U8", nullptr, 2));
  EXPECT_KVR(KVR_OK, kvr_store_block_tensor(fs, &k, buf, 64, "F32", shape, 2));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_load_block(nullptr, &k, buf, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_load_block(fs, nullptr, buf, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_load_block(fs, &k, nullptr, 64));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_load_block(fs, &k, buf, 0));
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_load_block(fs, &k, buf, 63));  // length mismatch
  EXPECT_KVR(KVR_OK, kvr_load_block(fs, &k, buf, 64));  // the intact block was kept

  bool yes = false;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_contains(fs, &k, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_contains(nullptr, &k, &yes));
  size_t hits = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_lookup_prefix(fs, nullptr, 2, &hits));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_lookup_prefix(fs, &k, 1, nullptr));
  EXPECT_KVR(KVR_OK, kvr_fs_lookup_prefix(fs, nullptr, 0, &hits));
  EXPECT_EQ(hits, 0u);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_remove(fs, nullptr));
  kvr_fs_stats st{};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_get_stats(fs, &st));  // struct_size unset
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_get_stats(fs, nullptr));
  char path[8];
  size_t need = 0;
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_fs_block_path(fs, &k, path, sizeof path, &need));
  EXPECT_GT(need, sizeof path);

  kvr_job* job = nullptr;
  kvr_fs_store_item si[2] = {{k, buf, 64}, {key(2), nullptr, 64}};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_store(fs, si, 2, &job));  // NULL src
  EXPECT_NE(std::string(kvr_last_error_message()).find("items[1]"), std::string::npos);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_store(fs, si, 0, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_store(fs, nullptr, 1, &job));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_store(fs, si, 1, nullptr));
  kvr_fs_load_item li[1] = {{k, buf, 0}};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_load(fs, li, 1, &job));  // zero length
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_submit_load(nullptr, li, 1, &job));
  EXPECT_EQ(job, nullptr);
  kvr_fs_close(fs);
  kvr_fs_close(nullptr);
}
