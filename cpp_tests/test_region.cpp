// Shared host region through the installed C ABI: multi-process layout, crash safety,
// attach protocol, bad inputs, pinning.
#include <kvr.hpp>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"

using kvr_test::fork_child;
using kvr_test::Pipe;
using kvr_test::unique_name;
using kvr_test::wait_child;

namespace {

std::string shm_path(const std::string& name) { return "/dev/shm/kvr_" + name + ".mmap"; }
bool exists(const std::string& p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

kvr_region_config config(const std::string& name, uint64_t blocks, uint64_t page, uint32_t workers,
                         int32_t rank, uint32_t flags = KVR_REGION_CREATE) {
  kvr_region_config c;
  kvr_region_config_default(&c);
  c.name = name.c_str();
  c.num_blocks = blocks;
  c.cpu_page_size = page;
  c.num_workers = workers;
  c.rank = rank;
  c.flags = flags;
  return c;
}

uint8_t pattern(uint32_t rank, uint64_t block, uint32_t tensor, uint64_t i) {
  return static_cast<uint8_t>(rank * 61 + block * 7 + tensor * 131 + i * 3 + 1);
}

}  // namespace

// 4 ranks in 4 processes write rank/block/tensor patterns through their views; the
// scheduler's row view sees exactly the interleaving.
TEST(Region, FourRanksAndSchedulerSeeTheInterleavedLayout) {
  const std::string name = unique_name("interleave");
  const uint32_t workers = 4;
  const uint64_t blocks = 16;
  const uint64_t tensor_sizes[2] = {3000, 5192};  // K and V of one layer, per block
  const uint64_t page = tensor_sizes[0] + tensor_sizes[1];
  auto sc = config(name, blocks, page, workers, KVR_RANK_SCHEDULER);
  kvr_region* sched = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&sc, &sched));

  std::vector<pid_t> kids;
  for (uint32_t r = 0; r < workers; r++) {
    kids.push_back(fork_child([&, r] {
      auto c = config(name, blocks, page, workers, static_cast<int32_t>(r), 0);  // attach only
      kvr_region* region = nullptr;
      if (kvr_region_open(&c, &region) != KVR_OK) return 10;
      for (uint32_t t = 0; t < 2; t++) {
        kvr_view v;
        if (kvr_create_view(region, tensor_sizes[t], &v) != KVR_OK) return 11;
        if (v.row_stride != page * workers || v.bytes_per_block != tensor_sizes[t]) return 12;
        for (uint64_t b = 0; b < blocks; b++)
          for (uint64_t i = 0; i < v.bytes_per_block; i++)
            v.base[b * v.row_stride + i] = pattern(r, b, t, i);
      }
      kvr_view extra;
      if (kvr_create_view(region, 1, &extra) != KVR_ERR_TOO_LARGE) return 13;  // slice is full
      kvr_region_close(region);
      return 0;
    }));
  }
  for (pid_t k : kids) EXPECT_EQ(wait_child(k), 0);

  kvr_view row;
  ASSERT_KVR(KVR_OK, kvr_region_row_view(sched, &row));
  ASSERT_EQ(row.row_stride, page * workers);
  ASSERT_EQ(row.bytes_per_block, page * workers);
  size_t mismatches = 0;
  for (uint64_t b = 0; b < blocks; b++)
    for (uint32_t r = 0; r < workers; r++)
      for (uint32_t t = 0; t < 2; t++) {
        const uint64_t off = b * row.row_stride + r * page + (t ? tensor_sizes[0] : 0);
        for (uint64_t i = 0; i < tensor_sizes[t]; i++)
          mismatches += row.base[off + i] != pattern(r, b, t, i);
      }
  EXPECT_EQ(mismatches, 0u);
  kvr_view v;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_create_view(sched, 16, &v));  // scheduler has no rank
  kvr_region_close(sched);
  EXPECT_FALSE(exists(shm_path(name))) << "last close removes the file";
}

// A creator SIGKILLed mid-life leaves its file behind; the next open replaces it.
TEST(Region, FileOfKilledCreatorIsReplaced) {
  const std::string name = unique_name("killed");
  Pipe ready;
  pid_t kid = fork_child([&] {
    auto c = config(name, 8, 4096, 1, 0);
    kvr_region* r = nullptr;
    if (kvr_region_open(&c, &r) != KVR_OK) return 1;
    kvr_view v;
    kvr_create_view(r, 4096, &v);
    std::memset(v.base, 0xAB, 4096);
    ready.signal();
    pause();  // killed here
    return 0;
  });
  ASSERT_TRUE(ready.wait());
  kill(kid, SIGKILL);
  EXPECT_EQ(wait_child(kid), 128 + SIGKILL);
  ASSERT_TRUE(exists(shm_path(name))) << "SIGKILL leaves the file";

  auto c = config(name, 8, 4096, 1, 0);
  kvr_region* r = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  kvr_region_info info{};
  info.struct_size = sizeof info;
  ASSERT_KVR(KVR_OK, kvr_region_get_info(r, &info));
  EXPECT_TRUE(info.created) << "stale file must be replaced, not attached";
  EXPECT_EQ(info.data[0], 0) << "fresh region is zeroed";
  kvr_region_close(r);
  EXPECT_FALSE(exists(shm_path(name)));
}

// An attach-only open does not take over a stale file either: it waits for a creator.
TEST(Region, AttachOnlyDoesNotUseAStaleFile) {
  const std::string name = unique_name("stale_attach");
  Pipe ready;
  pid_t kid = fork_child([&] {
    auto c = config(name, 2, 4096, 1, 0);
    kvr_region* r = nullptr;
    if (kvr_region_open(&c, &r) != KVR_OK) return 1;
    ready.signal();
    pause();
    return 0;
  });
  ASSERT_TRUE(ready.wait());
  kill(kid, SIGKILL);
  wait_child(kid);
  auto c = config(name, 2, 4096, 1, 0, 0);
  c.attach_timeout_ms = 150;
  kvr_region* r = nullptr;
  EXPECT_KVR(KVR_ERR_TIMEOUT, kvr_region_open(&c, &r));
  EXPECT_EQ(r, nullptr);
  // A creator cleans it up.
  c.flags = KVR_REGION_CREATE;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  kvr_region_close(r);
}

// A live holder's file is never stolen: a second creator attaches and sees its data.
TEST(Region, LiveHoldersFileIsNeverStolen) {
  const std::string name = unique_name("live");
  Pipe ready, done;
  pid_t kid = fork_child([&] {
    auto c = config(name, 4, 8192, 2, 0);
    kvr_region* r = nullptr;
    if (kvr_region_open(&c, &r) != KVR_OK) return 1;
    kvr_view v;
    kvr_create_view(r, 8192, &v);
    std::memset(v.base, 0x77, 8192);
    ready.signal();
    done.wait();
    kvr_region_close(r);
    return 0;
  });
  ASSERT_TRUE(ready.wait());
  auto c = config(name, 4, 8192, 2, 1);
  kvr_region* r = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  kvr_region_info info{};
  info.struct_size = sizeof info;
  ASSERT_KVR(KVR_OK, kvr_region_get_info(r, &info));
  EXPECT_FALSE(info.created);
  EXPECT_EQ(info.data[0], 0x77) << "must see the live holder's bytes";
  done.signal();
  EXPECT_EQ(wait_child(kid), 0);
  EXPECT_TRUE(exists(shm_path(name))) << "still held by this process";
  kvr_region_close(r);
  EXPECT_FALSE(exists(shm_path(name)));
}

TEST(Region, DifferentLayoutIsRejectedNamingBoth) {
  const std::string name = unique_name("mismatch");
  auto a = config(name, 8, 4096, 2, 0);
  kvr_region* r = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&a, &r));
  auto b = config(name, 8, 8192, 2, 1);
  kvr_region* r2 = nullptr;
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_region_open(&b, &r2));
  std::string msg = kvr_last_error_message();
  EXPECT_NE(msg.find("8 blocks x 2 workers x 4096 B/slice"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8 blocks x 2 workers x 8192 B/slice"), std::string::npos) << msg;
  EXPECT_EQ(r2, nullptr);
  kvr_region_close(r);
}

TEST(Region, AttachWithoutCreatorTimesOut) {
  const std::string name = unique_name("nocreator");
  auto c = config(name, 4, 4096, 1, 0, 0);
  c.attach_timeout_ms = 200;
  kvr_region* r = nullptr;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_KVR(KVR_ERR_TIMEOUT, kvr_region_open(&c, &r));
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(ms, 150);
  EXPECT_LT(ms, 3000);
}

TEST(Region, AttachWaitsForALateCreator) {
  const std::string name = unique_name("late");
  Pipe done;
  pid_t kid = fork_child([&] {
    usleep(150 * 1000);
    auto c = config(name, 4, 4096, 2, KVR_RANK_SCHEDULER);
    kvr_region* r = nullptr;
    if (kvr_region_open(&c, &r) != KVR_OK) return 1;
    done.wait();
    kvr_region_close(r);
    return 0;
  });
  auto c = config(name, 4, 4096, 2, 1, 0);
  c.attach_timeout_ms = 5000;
  kvr_region* r = nullptr;
  EXPECT_KVR(KVR_OK, kvr_region_open(&c, &r));
  done.signal();
  EXPECT_EQ(wait_child(kid), 0);
  kvr_region_close(r);
}

TEST(Region, LargerThanFreeSpaceFailsAtOpenWithNumbers) {
  struct statvfs st;
  ASSERT_EQ(statvfs("/dev/shm", &st), 0);
  const uint64_t free_bytes = static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
  const std::string name = unique_name("huge");
  auto c = config(name, free_bytes / (1 << 20) + 16, 1 << 20, 1, 0);
  kvr_region* r = nullptr;
  EXPECT_KVR(KVR_ERR_NO_SPACE, kvr_region_open(&c, &r));
  std::string msg = kvr_last_error_message();
  EXPECT_NE(msg.find("needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("free"), std::string::npos) << msg;
  EXPECT_FALSE(exists(shm_path(name)));
}

TEST(Region, FileIsPrivateAndSymlinksAreRefused) {
  const std::string name = unique_name("perm");
  auto c = config(name, 2, 4096, 1, 0);
  kvr_region* r = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  struct stat st;
  ASSERT_EQ(stat(shm_path(name).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  kvr_region_close(r);

  const std::string link_name = unique_name("symlink");
  ASSERT_EQ(symlink("/dev/null", shm_path(link_name).c_str()), 0);
  auto l = config(link_name, 2, 4096, 1, 0);
  EXPECT_KVR(KVR_ERR_PERMISSION, kvr_region_open(&l, &r));
  unlink(shm_path(link_name).c_str());
}

TEST(Region, BadInputsAreRejected) {
  const std::string name = unique_name("bad");
  kvr_region* r = nullptr;
  auto good = config(name, 4, 4096, 2, 0);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_open(nullptr, &r));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_open(&good, nullptr));
  auto expect_bad = [&](kvr_region_config c, const char* why) {
    kvr_region* out = nullptr;
    EXPECT_EQ(kvr_region_open(&c, &out), KVR_ERR_INVALID_ARGUMENT) << why << ": " << kvr_last_error_message();
    EXPECT_EQ(out, nullptr) << why;
  };
  auto c = good; c.name = nullptr; expect_bad(c, "NULL name");
  c = good; c.name = ""; expect_bad(c, "empty name");
  c = good; c.name = "a/b"; expect_bad(c, "slash");
  c = good; c.name = ".."; expect_bad(c, "dotdot");
  c = good; c.num_blocks = 0; expect_bad(c, "zero blocks");
  c = good; c.cpu_page_size = 0; expect_bad(c, "zero page");
  c = good; c.num_workers = 0; expect_bad(c, "zero workers");
  c = good; c.num_blocks = UINT64_MAX; expect_bad(c, "overflow");
  c = good; c.cpu_page_size = UINT64_MAX / 2; expect_bad(c, "overflow page");
  c = good; c.rank = 2; expect_bad(c, "rank >= workers");
  c = good; c.rank = -7; expect_bad(c, "negative rank");
  c = good; c.flags = 1u << 20; expect_bad(c, "unknown flag");
  c = good; c.flags = KVR_REGION_PIN | KVR_REGION_PIN_IF_AVAILABLE; expect_bad(c, "both pin flags");
  c = good; c.struct_size = 0; expect_bad(c, "struct_size 0");
  c = good; c.struct_size = 8; expect_bad(c, "struct_size too small");

  ASSERT_KVR(KVR_OK, kvr_region_open(&good, &r));
  kvr_view v;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_create_view(nullptr, 16, &v));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_create_view(r, 16, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_create_view(r, 0, &v));
  EXPECT_KVR(KVR_ERR_TOO_LARGE, kvr_create_view(r, UINT64_MAX, &v));
  EXPECT_KVR(KVR_ERR_TOO_LARGE, kvr_create_view(r, 4097, &v));
  EXPECT_KVR(KVR_OK, kvr_create_view(r, 4096, &v));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_row_view(nullptr, &v));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_row_view(r, nullptr));
  kvr_region_info info{};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_get_info(r, &info));  // struct_size unset
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_get_info(r, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_get_info(nullptr, &info));
  kvr_region_close(r);
  kvr_region_close(nullptr);  // no-op
}

TEST(Region, ViewsPackAndNeverOverlap) {
  kvr::RegionOptions o;
  o.name = unique_name("views");
  o.num_blocks = 3;
  o.cpu_page_size = 1000;
  o.num_workers = 3;
  o.rank = 2;
  kvr::Region region(o);
  kvr::View a = region.create_view(600);
  kvr::View b = region.create_view(400);
  EXPECT_EQ(b.base(), a.base() + 600);
  EXPECT_EQ(a.row_stride(), 3000u);
  kvr_region_info info = region.info();
  EXPECT_EQ(a.base(), info.data + 2 * 1000);
  EXPECT_EQ(b.block(2).data() + 400, info.data + 3 * 3000);  // end of the last row
  EXPECT_THROW(b.block(3), std::out_of_range);
  try {
    region.create_view(1);
    FAIL();
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_TOO_LARGE);
  }
}

TEST(Region, PinningWithoutCudaIsAStatus) {
  const bool have_cuda = kvr_cuda_available() == KVR_OK;
  const std::string name = unique_name("pin");
  auto c = config(name, 4, 4096, 1, 0, KVR_REGION_CREATE | KVR_REGION_PIN);
  kvr_region* r = nullptr;
  if (have_cuda) {
    GTEST_SKIP() << "CUDA present: covered by PinnedRegionRegistersWithCuda";
  }
  EXPECT_KVR(KVR_ERR_CUDA_UNAVAILABLE, kvr_region_open(&c, &r));
  EXPECT_EQ(r, nullptr);
  c.flags = KVR_REGION_CREATE | KVR_REGION_PIN_IF_AVAILABLE;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  kvr_region_info info{};
  info.struct_size = sizeof info;
  ASSERT_KVR(KVR_OK, kvr_region_get_info(r, &info));
  EXPECT_FALSE(info.pinned);
  kvr_region_close(r);
}

TEST(Region, PinnedRegionRegistersWithCuda) {
  if (kvr_cuda_available() != KVR_OK) {
    GTEST_SKIP() << "skipped: " << kvr_last_error_message();
  }
  const std::string name = unique_name("pinned");
  auto c = config(name, 64, 1 << 16, 2, 0, KVR_REGION_CREATE | KVR_REGION_PIN);
  kvr_region* r = nullptr;
  ASSERT_KVR(KVR_OK, kvr_region_open(&c, &r));
  kvr_region_info info{};
  info.struct_size = sizeof info;
  ASSERT_KVR(KVR_OK, kvr_region_get_info(r, &info));
  EXPECT_TRUE(info.pinned);
  kvr_region_close(r);
}
