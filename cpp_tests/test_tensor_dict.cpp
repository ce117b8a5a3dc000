// The lazy tensor directory as a dictionary, through the installed C ABI and kvr.hpp: size,
// contains, ids in insertion order (range-for over a snapshot, also while other threads put
// and remove), find with a miss that is not an error, remove, adopt, and bad inputs.
#include <kvr.hpp>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {

bool exists(const std::string& p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

std::size_t files_in(const std::string& dir) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) n++;
  return n;
}

// One U8 tensor "x" of 16 bytes of `fill`, put as item `id`.
void put(kvr::TensorDir& dir, const std::string& id, std::uint8_t fill) {
  static const std::uint64_t shape[1] = {16};
  std::vector<std::uint8_t> b(16, fill);
  const kvr_tensor t{"x", KVR_DTYPE_U8, 1, shape, nullptr, b.data()};
  dir.put(id, &t, 1);
}

// A checkpoint file with tensors "k" (8 bytes of `fill`) and "v" (4 bytes).
void checkpoint(const std::string& path, std::uint8_t fill) {
  std::vector<std::uint8_t> k(8, fill), v(4, static_cast<std::uint8_t>(fill + 1));
  const std::uint64_t ks[1] = {8}, vs[1] = {4};
  const kvr_tensor t[2] = {{"k", KVR_DTYPE_U8, 1, ks, nullptr, k.data()},
                           {"v", KVR_DTYPE_U8, 1, vs, nullptr, v.data()}};
  kvr::write_tensors(path, t, 2, nullptr, 0, KVR_TENSORS_NO_SYNC);
}

std::vector<std::uint8_t> read(const kvr::LazyTensor& r) {
  std::vector<std::uint8_t> out(r.view().nbytes);
  out.resize(r.materialize(out.data(), out.size()));
  return out;
}

kvr_status status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const kvr::Error& e) {
    return e.status();
  }
  return KVR_OK;
}

}  // namespace

TEST(TensorDict, SizeContainsFindRemoveAndInsertionOrder) {
  kvr::TensorDir dir;
  EXPECT_EQ(dir.size(), 0u);
  EXPECT_TRUE(dir.empty());
  EXPECT_EQ(dir.begin(), dir.end());
  for (const char* id : {"b", "a", "c"}) put(dir, id, static_cast<std::uint8_t>(id[0]));
  EXPECT_EQ(dir.size(), 3u);
  EXPECT_TRUE(dir.contains("a"));
  EXPECT_FALSE(dir.contains("d"));
  std::vector<std::string> seen;
  for (const std::string& id : dir) seen.push_back(id);
  EXPECT_EQ(seen, (std::vector<std::string>{"b", "a", "c"}));
  EXPECT_EQ(std::distance(dir.begin(), dir.end()), 3);
  put(dir, "a", 7);  // replaced: keeps its place
  EXPECT_EQ(dir.ids(), (std::vector<std::string>{"b", "a", "c"}));
  std::optional<kvr::LazyTensor> a = dir.find("a", "x");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(read(*a), std::vector<std::uint8_t>(16, 7));
  EXPECT_FALSE(dir.find("missing").has_value()) << "a miss does not throw";
  EXPECT_EQ(status_of([&] { (void)dir.get_ref("missing"); }), KVR_ERR_NOT_FOUND);
  EXPECT_TRUE(dir.remove("a"));
  EXPECT_FALSE(dir.remove("a"));
  EXPECT_EQ(files_in(dir.path()), 3u) << "a's file stays while `a` references it";
  EXPECT_EQ(read(*a), std::vector<std::uint8_t>(16, 7));
  a.reset();
  EXPECT_EQ(files_in(dir.path()), 2u) << "deleted with its last reference";
  put(dir, "a", 1);
  EXPECT_EQ(dir.ids(), (std::vector<std::string>{"b", "c", "a"}));

  // Ids are never file names: '/', '..', empty and long ids are plain keys.
  const std::vector<std::string> odd = {"", "../up", "a/b/c", "..", std::string(300, 'L')};
  for (const auto& id : odd) put(dir, id, 3);
  for (const auto& id : odd) EXPECT_TRUE(dir.contains(id)) << id;
  std::vector<std::string> all = dir.ids();
  EXPECT_EQ(std::vector<std::string>(all.end() - 5, all.end()), odd);
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().rfind("item-", 0), 0u) << e.path();
  EXPECT_EQ(files_in(dir.path()), dir.size());

  dir.cleanup();
  EXPECT_EQ(dir.size(), 0u);
  EXPECT_FALSE(dir.contains("b"));
  EXPECT_EQ(dir.begin(), dir.end());
  EXPECT_EQ(status_of([&] { (void)dir.find("b"); }), KVR_ERR_CLOSED);
  EXPECT_EQ(status_of([&] { dir.remove("b"); }), KVR_ERR_CLOSED);
}

TEST(TensorDict, AdoptedFilesAreValidatedReadLazilyAndNeverDeleted) {
  kvr_test::TempDir src("kvr_tdict_src");
  const std::string ck = src.path + "/ck.safetensors", other = src.path + "/other.safetensors";
  checkpoint(ck, 10);
  checkpoint(other, 20);
  std::string dir_path;
  {
    kvr::TensorDir dir;
    dir_path = dir.path();
    put(dir, "own", 1);
    dir.adopt({{"k", ck, "k"}, {"v", ck, "v"}, {"whole", other, std::nullopt}});
    dir.adopt("k2", other, "k");
    EXPECT_EQ(dir.ids(), (std::vector<std::string>{"own", "k", "v", "whole", "k2"}));
    EXPECT_EQ(files_in(dir_path), 1u) << "adoption copies nothing";
    EXPECT_EQ(read(*dir.find("k")), std::vector<std::uint8_t>(8, 10));
    EXPECT_EQ(read(dir.get_ref("v", "v")), std::vector<std::uint8_t>(4, 11));
    EXPECT_EQ(read(dir.get_ref("whole", "v")), std::vector<std::uint8_t>(4, 21));
    EXPECT_EQ(read(dir.get_ref("k2")), std::vector<std::uint8_t>(8, 20));
    // Another tensor of the file is not this item; a whole file has no "only" tensor.
    std::uint8_t buf[16];
    EXPECT_EQ(status_of([&] { dir.get_ref("k", "v").materialize(buf, sizeof buf); }),
              KVR_ERR_NOT_FOUND);
    EXPECT_EQ(status_of([&] { dir.get_ref("whole").materialize(buf, sizeof buf); }),
              KVR_ERR_NOT_FOUND);

    // Bad entries: a clear status, and nothing of the batch adopted.
    const std::string hostile = src.path + "/hostile.safetensors";
    {
      std::ofstream f(hostile, std::ios::binary);
      const std::uint64_t huge = ~0ull;
      f.write(reinterpret_cast<const char*>(&huge), sizeof huge);
      f << "{\"k\":";
    }
    const auto before = dir.ids();
    struct Bad {
      kvr::AdoptItem item;
      kvr_status want;
    };
    const std::vector<Bad> bad = {
        {{"n", src.path + "/missing.safetensors", std::nullopt}, KVR_ERR_NOT_FOUND},
        {{"n", ck, "nope"}, KVR_ERR_NOT_FOUND},
        {{"n", hostile, std::nullopt}, KVR_ERR_CORRUPT},
        {{"n", src.path, std::nullopt}, KVR_ERR_IO},
        {{"n", dir_path + "/item-0.safetensors", std::nullopt}, KVR_ERR_INVALID_ARGUMENT},
        {{"n", "", std::nullopt}, KVR_ERR_INVALID_ARGUMENT},
    };
    for (const auto& b : bad) {
      kvr_status s = status_of([&] { dir.adopt({{"good", ck, "k"}, b.item}); });
      EXPECT_EQ(s, b.want) << b.item.location << ": " << kvr_last_error_message();
      EXPECT_EQ(dir.ids(), before) << b.item.location;
    }
    EXPECT_EQ(status_of([&] { dir.adopt({{"d", ck, "k"}, {"d", ck, "v"}}); }),
              KVR_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(dir.ids(), before);

    // The broken file shows at materialize, the missing id as a miss. (A file already
    // materialized stays mapped: `k2`'s reads are unaffected by the rename.)
    const std::string later = src.path + "/later.safetensors";
    checkpoint(later, 30);
    dir.adopt("k3", later, "k");
    std::optional<kvr::LazyTensor> k3 = dir.find("k3");
    ASSERT_TRUE(k3.has_value());
    std::filesystem::rename(hostile, later);  // replaced before its first open
    EXPECT_EQ(status_of([&] { read(*k3); }), KVR_ERR_CORRUPT);
    std::filesystem::remove(later);
    EXPECT_EQ(status_of([&] { read(*k3); }), KVR_ERR_NOT_FOUND) << "a vanished file";
    EXPECT_EQ(read(dir.get_ref("k2")), std::vector<std::uint8_t>(8, 20));
    EXPECT_FALSE(dir.find("no such item").has_value());

    EXPECT_TRUE(dir.remove("k"));
    EXPECT_TRUE(exists(ck)) << "removal leaves an adopted file alone";
    std::optional<kvr::LazyTensor> v = dir.find("v");
    dir.cleanup();
    EXPECT_FALSE(exists(dir_path));
    EXPECT_TRUE(exists(ck)) << "cleanup leaves adopted files alone";
    EXPECT_EQ(status_of([&] { read(*v); }), KVR_ERR_CLOSED);
    EXPECT_EQ(status_of([&] { dir.adopt("x", ck, "k"); }), KVR_ERR_CLOSED);
  }
  {
    kvr::TensorDir dir;
    dir.adopt("k", ck, "k");
    kvr::LazyTensor r = dir.get_ref("k");
    { kvr::TensorDir gone = std::move(dir); }
    EXPECT_EQ(read(r), std::vector<std::uint8_t>(8, 10));
  }
  EXPECT_TRUE(exists(ck)) << "the last release leaves adopted files alone";
}

// Range-for walks one snapshot while other threads put and remove: every id once, the
// stable ones first and in order, and whatever find returns materializes.
TEST(TensorDict, IterationWhileOtherThreadsPutAndRemove) {
  kvr::TensorDir dir;
  std::vector<std::string> stable;
  for (int i = 0; i < 8; i++) {
    stable.push_back("stable" + std::to_string(i));
    put(dir, stable.back(), static_cast<std::uint8_t>(i));
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 3; w++) {
    writers.emplace_back([&, w] {
      for (int round = 0; round < 120; round++) {
        const std::string id = "w" + std::to_string(w) + "-" + std::to_string(round % 5);
        if (round % 3 == 2)
          dir.remove(id);
        else
          put(dir, id, static_cast<std::uint8_t>(round));
      }
    });
  }
  std::thread reader([&] {
    int loops = 0;
    while (!stop.load() || loops == 0) {
      std::vector<std::string> seen;
      for (const std::string& id : dir) {
        seen.push_back(id);
        if (auto r = dir.find(id)) {
          std::vector<std::uint8_t> b = read(*r);
          EXPECT_EQ(b.size(), 16u);
          EXPECT_TRUE(std::all_of(b.begin(), b.end(), [&](std::uint8_t x) { return x == b[0]; }));
        }
      }
      EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), seen.size());
      ASSERT_GE(seen.size(), stable.size());
      EXPECT_EQ(std::vector<std::string>(seen.begin(), seen.begin() + 8), stable);
      loops++;
    }
  });
  for (auto& t : writers) t.join();
  stop = true;
  reader.join();
  EXPECT_EQ(dir.ids().size(), dir.size());
  EXPECT_EQ(files_in(dir.path()), dir.size());
}

TEST(TensorDict, BadInputsThroughTheCApi) {
  kvr::TensorDir dir;
  put(dir, "a", 1);
  put(dir, std::string(100, 'z'), 2);
  kvr_tensor_dir* d = dir.get();
  std::size_t n = 0;
  bool yes = false;
  kvr_tensor_lazy* l = nullptr;
  kvr_tensor_dir_ids* ids = nullptr;
  const char bad_utf8[] = {'\xff', '\xfe', 0};

  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_count(nullptr, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_count(d, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_contains(nullptr, "a", &yes));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_contains(d, nullptr, &yes));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_contains(d, "a", nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_contains(d, bad_utf8, &yes));
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_contains(d, "", &yes));
  EXPECT_FALSE(yes);

  // find: a miss is KVR_OK with found false and out NULL.
  l = reinterpret_cast<kvr_tensor_lazy*>(0x1);
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_find(d, "missing", nullptr, &yes, &l));
  EXPECT_FALSE(yes);
  EXPECT_EQ(l, nullptr);
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_find(d, "a", "x", &yes, &l));
  EXPECT_TRUE(yes);
  ASSERT_NE(l, nullptr);
  kvr_tensor_lazy_free(l);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_find(nullptr, "a", nullptr, &yes, &l));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_find(d, nullptr, nullptr, &yes, &l));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_find(d, "a", nullptr, nullptr, &l));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_find(d, "a", nullptr, &yes, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_find(d, "a", bad_utf8, &yes, &l));

  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_remove(nullptr, "a", &yes));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_remove(d, nullptr, &yes));
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_remove(d, "missing", nullptr));  // `removed` optional

  // Snapshots of ids: caller buffers with `needed`.
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_snapshot_ids(nullptr, &ids));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_snapshot_ids(d, nullptr));
  ASSERT_KVR(KVR_OK, kvr_tensor_dir_snapshot_ids(d, &ids));
  EXPECT_TRUE(dir.remove("a"));  // the snapshot does not change
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_ids_count(ids, &n));
  EXPECT_EQ(n, 2u);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_ids_count(nullptr, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_ids_count(ids, nullptr));
  char buf[128];
  std::memset(buf, '#', sizeof buf);
  std::size_t need = 0;
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_ids_at(ids, 0, buf, sizeof buf, &need));
  EXPECT_STREQ(buf, "a");
  EXPECT_EQ(need, 2u);
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_tensor_dir_ids_at(ids, 1, nullptr, 0, &need));
  EXPECT_EQ(need, 101u);
  std::memset(buf, '#', sizeof buf);
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_tensor_dir_ids_at(ids, 1, buf, 100, &need));
  EXPECT_EQ(need, 101u);
  EXPECT_EQ(buf[0], '#') << "a too-small buffer is left untouched";
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_ids_at(ids, 1, buf, 101, nullptr));
  EXPECT_EQ(std::string(buf), std::string(100, 'z'));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_ids_at(ids, 1, nullptr, 101, &need));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensor_dir_ids_at(ids, 2, buf, sizeof buf, &need));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_ids_at(nullptr, 0, buf, sizeof buf, &need));
  kvr_tensor_dir_ids_free(ids);
  kvr_tensor_dir_ids_free(nullptr);

  // adopt: the array and every entry are checked.
  kvr_test::TempDir src("kvr_tdict_bad");
  const std::string ck = src.path + "/ck.safetensors";
  checkpoint(ck, 1);
  kvr_tensor_dir_adopt_item it{sizeof(kvr_tensor_dir_adopt_item), "k", ck.c_str(), "k"};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(nullptr, &it, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, nullptr, 1));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, &it, 0));
  kvr_tensor_dir_adopt_item bad = it;
  bad.struct_size = 4;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, &bad, 1));
  bad = it;
  bad.item_id = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, &bad, 1));
  bad = it;
  bad.location = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, &bad, 1));
  bad = it;
  bad.tensor_name = bad_utf8;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, &bad, 1));
  const kvr_tensor_dir_adopt_item two[2] = {it, bad};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_adopt(d, two, 2));
  EXPECT_NE(kvr_test::last_error().find("items[1]"), std::string::npos) << kvr_test::last_error();
  EXPECT_FALSE(dir.contains("k")) << "nothing adopted";
  EXPECT_KVR(KVR_OK, kvr_tensor_dir_adopt(d, &it, 1));
  EXPECT_TRUE(dir.contains("k"));
}
