// Disk slot file through the installed C ABI and kvr.hpp: round trips, LRU eviction, bit
// flips, single owner across SIGKILL, geometry, sizes, batches, bad inputs.
#include <fcntl.h>
#include <kvr.hpp>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"

using kvr_test::fork_child;
using kvr_test::Pipe;
using kvr_test::unique_name;
using kvr_test::wait_child;

namespace {

std::string tmp_path(const std::string& stem) {
  const char* t = std::getenv("TMPDIR");
  return std::string(t ? t : "/tmp") + "/" + unique_name(stem) + ".slots";
}

/// Removes the file when the test ends.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& stem) : path(tmp_path(stem)) {}
  ~TempFile() { std::remove(path.c_str()); }
};

kvr::BlockKey key(uint32_t i) {
  kvr::BlockKey k{};
  std::memcpy(k.bytes, &i, sizeof i);
  k.bytes[15] = 0x42;
  return k;
}

std::vector<uint8_t> pattern(uint32_t seed, size_t n) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<uint8_t>(x);
  }
  return v;
}

kvr::DiskOptions options(const std::string& path, uint64_t slot, uint64_t slots,
                         uint32_t direct = KVR_DIRECT_IO_AUTO) {
  kvr::DiskOptions o;
  o.path = path;
  o.slot_size = slot;
  o.num_slots = slots;
  o.io_threads = 2;
  o.direct_io = direct;
  return o;
}

kvr_disk_config config(const std::string& path, uint64_t slot, uint64_t slots) {
  kvr_disk_config c;
  kvr_disk_config_default(&c);
  c.path = path.c_str();
  c.slot_size = slot;
  c.num_slots = slots;
  return c;
}

void flip_byte(const std::string& path, off_t off) {
  int fd = open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint8_t b = 0;
  ASSERT_EQ(pread(fd, &b, 1, off), 1);
  b ^= 0x01;
  ASSERT_EQ(pwrite(fd, &b, 1, off), 1);
  fsync(fd);
  close(fd);
}

}  // namespace

// Every size class with and without metadata, direct and buffered, survives a reopen.
TEST(Disk, RoundTripsEverySizeClassDirectAndBuffered) {
  const uint64_t slot = 128 * 1024;
  for (uint32_t mode : {KVR_DIRECT_IO_AUTO, KVR_DIRECT_IO_OFF}) {
    TempFile f("roundtrip");
    const size_t sizes[] = {1, 4095, 4096, 4097, 65536 + 3, slot};
    const size_t metas[] = {0, 7, KVR_DISK_MAX_META};
    uint32_t n = 0;
    {
      kvr::Disk d(options(f.path, slot, 32, mode));
      EXPECT_TRUE(d.stats().created);
      for (size_t s : sizes)
        for (size_t m : metas) {
          auto data = pattern(++n, s);
          auto meta = pattern(n + 1000, m);
          d.write(key(n), data.data(), s, m ? meta.data() : nullptr, m);
          std::vector<uint8_t> out(slot), mout(KVR_DISK_MAX_META);
          auto e = d.read(key(n), out.data(), out.size(), mout.data(), mout.size());
          ASSERT_EQ(e.len, s);
          ASSERT_EQ(e.meta_len, m);
          EXPECT_EQ(0, std::memcmp(out.data(), data.data(), s)) << s << " " << m;
          // An empty vector's data() may be NULL, which memcmp must not get (UBSan).
          if (m) {
            EXPECT_EQ(0, std::memcmp(mout.data(), meta.data(), m));
          }
        }
      EXPECT_EQ(d.stats().direct_io, mode == KVR_DIRECT_IO_AUTO && d.stats().direct_io);
    }
    kvr::Disk d(options(f.path, slot, 32, mode));
    auto st = d.stats();
    EXPECT_FALSE(st.created);
    EXPECT_EQ(st.recovered_entries, n);
    std::vector<uint8_t> out(slot), mout(KVR_DISK_MAX_META);
    kvr::DiskEntry e;
    ASSERT_TRUE(d.try_read(key(n), out.data(), out.size(), &e, mout.data(), mout.size()));
    EXPECT_EQ(0, std::memcmp(out.data(), pattern(n, e.len).data(), e.len));
  }
}

// LRU: the least recently used entry goes first; reads refresh recency; stats agree.
TEST(Disk, EvictsLeastRecentlyUsedAndCounts) {
  TempFile f("lru");
  kvr::Disk d(options(f.path, 4096, 3));
  uint8_t buf[4096] = {};  // initialised: the writes below send it to the file
  for (uint32_t i = 0; i < 3; i++) d.write(key(i), buf, 100);
  d.read(key(0), buf, sizeof buf);  // order now 1, 2, 0
  d.write(key(3), buf, 100);        // evicts 1
  EXPECT_FALSE(d.contains(key(1)));
  d.write(key(4), buf, 100);  // evicts 2
  EXPECT_FALSE(d.contains(key(2)));
  EXPECT_TRUE(d.contains(key(0)));
  EXPECT_FALSE(d.try_read(key(1), buf, sizeof buf));
  auto s = d.stats();
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.writes, 5u);
  EXPECT_EQ(s.bytes_written, 500u);
  EXPECT_EQ(s.bytes_read, 100u);
  EXPECT_EQ(s.entries, 3u);
  EXPECT_TRUE(d.remove(key(0)));
  EXPECT_FALSE(d.remove(key(0)));
  EXPECT_EQ(d.stats().free_slots, 1u);
}

// A flipped payload byte: CORRUPT once, then NOT_FOUND, and the slot is reused.
TEST(Disk, BitFlipIsCorruptThenNotFoundAndSlotReused) {
  TempFile f("flip");
  const uint64_t slot = 8192;
  auto data = pattern(1, 6000);
  {
    kvr::Disk d(options(f.path, slot, 4));
    d.write(key(1), data.data(), data.size());  // slot 0 of a fresh file
    d.write(key(2), data.data(), data.size());
  }
  // Layout: 4 KiB file header, 4 KiB header table (4 slots), slot 0's header page, payload.
  flip_byte(f.path, 4096 + 4096 + 4096 + 1234);
  kvr::Disk d(options(f.path, slot, 4));
  std::vector<uint8_t> out(slot);
  uint64_t len = 0, mlen = 0;
  auto k = key(1);
  EXPECT_KVR(KVR_ERR_CORRUPT,
             kvr_disk_read(d.get(), &k, out.data(), slot, &len, nullptr, 0, &mlen));
  EXPECT_KVR(KVR_ERR_NOT_FOUND,
             kvr_disk_read(d.get(), &k, out.data(), slot, &len, nullptr, 0, &mlen));
  auto s = d.stats();
  EXPECT_EQ(s.corrupt_dropped, 1u);
  EXPECT_EQ(s.free_slots, 3u);
  for (uint32_t i = 10; i < 13; i++) d.write(key(i), data.data(), 10);
  EXPECT_EQ(d.stats().evictions, 0u) << "freed slot reused before evicting";
  EXPECT_EQ(d.stats().free_slots, 0u);
}

// One owner at a time; a SIGKILLed owner never blocks the next one.
TEST(Disk, SecondOwnerIsBusyAndReopenAfterKillSucceeds) {
  TempFile f("owner");
  Pipe ready;
  pid_t kid = fork_child([&] {
    auto c = config(f.path, 4096, 4);
    kvr_disk* d = nullptr;
    if (kvr_disk_open(&c, &d) != KVR_OK) return 1;
    uint8_t b[10] = {7};
    auto k = key(9);
    if (kvr_disk_write(d, &k, b, sizeof b, nullptr, 0) != KVR_OK) return 2;
    ready.signal();
    pause();  // killed here
    return 0;
  });
  ASSERT_TRUE(ready.wait());
  auto c = config(f.path, 4096, 4);
  kvr_disk* d = nullptr;
  EXPECT_KVR(KVR_ERR_BUSY, kvr_disk_open(&c, &d));
  EXPECT_EQ(d, nullptr);
  kill(kid, SIGKILL);
  EXPECT_EQ(wait_child(kid), 128 + SIGKILL);
  ASSERT_KVR(KVR_OK, kvr_disk_open(&c, &d));
  bool has = false;
  auto k = key(9);
  EXPECT_KVR(KVR_OK, kvr_disk_contains(d, &k, &has));
  EXPECT_TRUE(has);
  kvr_disk* d2 = nullptr;
  EXPECT_KVR(KVR_ERR_BUSY, kvr_disk_open(&c, &d2));
  kvr_disk_close(d);
}

TEST(Disk, GeometryMismatchAndNoSpace) {
  TempFile f("geometry");
  { kvr::Disk d(options(f.path, 4096, 4)); }
  try {
    kvr::Disk d(options(f.path, 8192, 4));
    FAIL() << "slot size mismatch accepted";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_LAYOUT_MISMATCH);
  }
  auto c = config(f.path, 4096, 5);
  kvr_disk* d = nullptr;
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_disk_open(&c, &d));
  c.num_slots = 4;
  c.slot_size = 1000;  // rounds up to 4096: same geometry
  ASSERT_KVR(KVR_OK, kvr_disk_open(&c, &d));
  kvr_disk_close(d);
  TempFile huge("huge");
  auto h = config(huge.path, 1ull << 30, 4ull << 20);  // 4 PiB
  d = nullptr;
  EXPECT_KVR(KVR_ERR_NO_SPACE, kvr_disk_open(&h, &d));
  EXPECT_EQ(d, nullptr);
  struct stat st;
  EXPECT_NE(lstat(huge.path.c_str(), &st), 0) << "nothing left behind";
}

TEST(Disk, BadInputsAreRejected) {
  TempFile f("bad");
  kvr_disk* d = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_config_default(nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(nullptr, &d));
  auto c = config(f.path, 4096, 4);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&c, nullptr));
  auto bad = c;
  bad.path = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  bad = c;
  bad.path = "";
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  bad = c;
  bad.slot_size = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  bad = c;
  bad.num_slots = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  bad = c;
  bad.direct_io = 3;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  bad = c;
  bad.struct_size = 4;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&bad, &d));
  EXPECT_EQ(d, nullptr);
  kvr_disk_close(nullptr);

  ASSERT_KVR(KVR_OK, kvr_disk_open(&c, &d));
  auto k = key(1);
  uint8_t buf[8192] = {1, 2, 3};
  uint8_t meta[16] = {9};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_write(nullptr, &k, buf, 10, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_write(d, nullptr, buf, 10, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_write(d, &k, nullptr, 10, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_write(d, &k, buf, 0, nullptr, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_write(d, &k, buf, 10, nullptr, 5));
  EXPECT_KVR(KVR_ERR_TOO_LARGE, kvr_disk_write(d, &k, buf, 4097, nullptr, 0));
  std::string msg = kvr_last_error_message();
  EXPECT_NE(msg.find("4097"), std::string::npos) << msg;
  EXPECT_NE(msg.find("4096"), std::string::npos) << msg;
  std::vector<uint8_t> big_meta(KVR_DISK_MAX_META + 1);
  EXPECT_KVR(KVR_ERR_TOO_LARGE,
             kvr_disk_write(d, &k, buf, 10, big_meta.data(), big_meta.size()));
  ASSERT_KVR(KVR_OK, kvr_disk_write(d, &k, buf, 3000, meta, 16));

  uint64_t len = 0, mlen = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(nullptr, &k, buf, 8192, &len, meta, 16, &mlen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(d, nullptr, buf, 8192, &len, meta, 16, &mlen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(d, &k, nullptr, 8192, &len, meta, 16, &mlen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_read(d, &k, buf, 0, &len, meta, 16, &mlen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(d, &k, buf, 8192, nullptr, meta, 16, &mlen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(d, &k, buf, 8192, &len, meta, 16, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_disk_read(d, &k, buf, 8192, &len, nullptr, 16, &mlen));
  // Too small: needed sizes written out, for the payload and for the metadata.
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_disk_read(d, &k, buf, 2999, &len, meta, 16, &mlen));
  EXPECT_EQ(len, 3000u);
  EXPECT_EQ(mlen, 16u);
  len = mlen = 0;
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_disk_read(d, &k, buf, 8192, &len, nullptr, 0, &mlen));
  EXPECT_EQ(len, 3000u);
  EXPECT_EQ(mlen, 16u);
  auto other = key(2);
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_disk_read(d, &other, buf, 8192, &len, meta, 16, &mlen));
  EXPECT_KVR(KVR_OK, kvr_disk_read(d, &k, buf, 8192, &len, meta, 16, &mlen));
  EXPECT_EQ(len, 3000u);

  bool has = true;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_contains(d, &k, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_contains(d, nullptr, &has));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_remove(d, nullptr));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_disk_remove(d, &other));
  kvr_disk_stats st{};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_get_stats(d, &st));  // struct_size not set
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_get_stats(d, nullptr));
  kvr_job* j = nullptr;
  kvr_disk_write_item w{};
  kvr_disk_read_item r{};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write(d, &w, 0, &j));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write(d, nullptr, 1, &j));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_write(d, &w, 1, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_read(d, &r, 0, &j));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_submit_read(nullptr, &r, 1, &j));
  EXPECT_EQ(j, nullptr);
  // A NULL source inside a batch fails that item only.
  ASSERT_KVR(KVR_OK, kvr_disk_submit_write(d, &w, 1, &j));
  EXPECT_KVR(KVR_OK, kvr_job_wait(j, -1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_job_item_status(j, 0, nullptr));
  kvr_job_free(j);
  kvr_disk_close(d);
}

TEST(Disk, BatchesThroughJobs) {
  TempFile f("batch");
  kvr::Disk d(options(f.path, 16384, 8));
  std::vector<std::vector<uint8_t>> src;
  std::vector<kvr_disk_write_item> w(6);
  for (uint32_t i = 0; i < 6; i++) {
    src.push_back(pattern(i, 1000 + i * 2000));
    auto k = key(i);
    w[i].key = k;
    w[i].src = src[i].data();
    w[i].len = src[i].size();
  }
  {
    kvr::Job job = d.submit_write(w.data(), w.size());
    job.wait();
    EXPECT_EQ(job.poll().failed, 0u);
  }
  std::vector<std::vector<uint8_t>> dst(7, std::vector<uint8_t>(16384));
  std::vector<kvr_disk_read_item> r(7);
  for (uint32_t i = 0; i < 7; i++) {  // key 6 was never written
    auto k = key(i);
    r[i].key = k;
    r[i].dst = dst[i].data();
    r[i].dst_cap = dst[i].size();
  }
  kvr::Job job = d.submit_read(r.data(), r.size());
  job.wait(10000);
  auto p = job.poll();
  EXPECT_EQ(p.done, 7u);
  EXPECT_EQ(p.failed, 1u);
  EXPECT_EQ(job.item_status(6), KVR_ERR_NOT_FOUND);
  for (uint32_t i = 0; i < 6; i++) {
    uint64_t bytes = 0;
    EXPECT_EQ(job.item_status(i, &bytes), KVR_OK);
    EXPECT_EQ(bytes, src[i].size());
    EXPECT_EQ(r[i].len, src[i].size());
    EXPECT_EQ(0, std::memcmp(dst[i].data(), src[i].data(), src[i].size()));
  }
}
