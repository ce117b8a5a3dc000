// Tensor files through the installed C ABI and kvr.hpp: strided writes, lazy reads, name
// fallback, the lazy directory, region export/import, CUDA-less device copy, bad inputs.
#include <kvr.hpp>
#include <sys/stat.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

using kvr_test::unique_name;

namespace {

bool exists(const std::string& p) {
  struct stat st;
  return lstat(p.c_str(), &st) == 0;
}

std::string tmp_path(const std::string& stem) {
  const char* t = std::getenv("TMPDIR");
  return std::string(t ? t : "/tmp") + "/" + unique_name(stem) + ".safetensors";
}

kvr_tensor tensor(const char* name, uint32_t dtype, uint32_t rank, const uint64_t* shape,
                  const int64_t* strides, const void* data) {
  kvr_tensor t;
  t.name = name;
  t.dtype = dtype;
  t.rank = rank;
  t.shape = shape;
  t.strides = strides;
  t.data = data;
  return t;
}

}  // namespace

// A transposed matrix and a scalar round-trip; the file starts tensors on 4 KiB.
TEST(Tensors, StridedWriteAndZeroCopyRead) {
  const std::string path = tmp_path("strided");
  std::vector<float> m(12);
  for (int i = 0; i < 12; i++) m[i] = static_cast<float>(i);  // 4x3 row-major
  const uint64_t shape_t[2] = {3, 4};
  const int64_t strides_t[2] = {1, 3};  // its transpose
  const int64_t scalar = 42;
  kvr_tensor ts[2] = {tensor("t", KVR_DTYPE_F32, 2, shape_t, strides_t, m.data()),
                      tensor("s", KVR_DTYPE_I64, 0, nullptr, nullptr, &scalar)};
  kvr_kv md[1] = {{"engine", "test"}};
  kvr::write_tensors(path, ts, 2, md, 1, KVR_TENSORS_ALIGN_4K);
  {
    kvr::TensorFile f(path);
    EXPECT_EQ(f.size(), 2u);
    EXPECT_EQ(f.name_at(0), "t");
    EXPECT_EQ(f.metadata("engine"), "test");
    kvr_tensor_ref r = f.tensor("t");
    EXPECT_EQ(r.dtype, KVR_DTYPE_F32);
    ASSERT_EQ(r.rank, 2u);
    EXPECT_EQ(r.shape[0], 3u);
    EXPECT_EQ(r.shape[1], 4u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data) % 4096, 0u);
    const float* d = static_cast<const float*>(r.data);
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 4; j++) EXPECT_EQ(d[i * 4 + j], static_cast<float>(j * 3 + i));
    int64_t out = 0;
    EXPECT_EQ(f.read_into("s", &out, sizeof out), sizeof out);
    EXPECT_EQ(out, 42);
    // O_DIRECT read of an aligned tensor into an aligned buffer, and into an unaligned one.
    alignas(4096) static float direct[4096 / sizeof(float)];
    EXPECT_EQ(f.read_into_direct("t", direct, sizeof direct), 48u);
    for (int i = 0; i < 3; i++)
      for (int j = 0; j < 4; j++) EXPECT_EQ(direct[i * 4 + j], static_cast<float>(j * 3 + i));
    float unaligned[13];
    EXPECT_EQ(f.read_into_direct("t", unaligned + 1, 48), 48u);
    EXPECT_EQ(unaligned[1 + 5], static_cast<float>(1 * 3 + 1));
    // NULL name with two tensors: NOT_FOUND listing the names.
    try {
      (void)f.tensor(nullptr);  // only the throw matters
      ADD_FAILURE() << "expected NOT_FOUND";
    } catch (const kvr::Error& e) {
      EXPECT_EQ(e.status(), KVR_ERR_NOT_FOUND);
      EXPECT_NE(std::string(e.what()).find("'t', 's'"), std::string::npos) << e.what();
    }
    // Too small: the needed size is reported.
    std::size_t need = 0;
    float small[2];
    EXPECT_KVR(KVR_ERR_TOO_SMALL,
               kvr_tensors_read_into(f.get(), "t", small, sizeof small, &need));
    EXPECT_EQ(need, 48u);
    need = 0;
    EXPECT_KVR(KVR_ERR_TOO_SMALL,
               kvr_tensors_read_into_direct(f.get(), "t", small, sizeof small, &need));
    EXPECT_EQ(need, 48u);
    // The device copy reports missing CUDA instead of copying to host memory.
    if (kvr_cuda_available() != KVR_OK) {
      EXPECT_KVR(KVR_ERR_CUDA_UNAVAILABLE,
                 kvr_tensors_read_into_device(f.get(), "t", 0x1000, 48, 0, &need));
      std::printf("skipped: device copy, no CUDA here\n");
    }
  }
  std::remove(path.c_str());
}

TEST(Tensors, BadInputsAreRejectedAndLeaveNoFile) {
  const std::string path = tmp_path("bad");
  const uint64_t shape[1] = {4};
  float data[4] = {1, 2, 3, 4};
  kvr_tensor good = tensor("a", KVR_DTYPE_F32, 1, shape, nullptr, data);
  kvr_tensor dup[2] = {good, good};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), dup, 2, nullptr, 0, 0));
  kvr_tensor bad = good;
  bad.dtype = 999;
  EXPECT_KVR(KVR_ERR_UNSUPPORTED, kvr_tensors_write(path.c_str(), &bad, 1, nullptr, 0, 0));
  bad = good;
  bad.name = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &bad, 1, nullptr, 0, 0));
  bad = good;
  bad.shape = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &bad, 1, nullptr, 0, 0));
  bad = good;
  bad.data = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &bad, 1, nullptr, 0, 0));
  const uint64_t huge[2] = {UINT64_MAX, 16};
  bad = good;
  bad.rank = 2;
  bad.shape = huge;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &bad, 1, nullptr, 0, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(nullptr, &good, 1, nullptr, 0, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), nullptr, 1, nullptr, 0, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &good, 1, nullptr, 2, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_write(path.c_str(), &good, 1, nullptr, 0, 0x100));
  EXPECT_FALSE(exists(path));

  // Open: bad paths and malformed files.
  kvr_tensor_file* f = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_open(nullptr, &f));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensors_open("/nonexistent/x.safetensors", &f));
  EXPECT_EQ(f, nullptr);
  FILE* fp = std::fopen(path.c_str(), "wb");
  ASSERT_NE(fp, nullptr);
  const char junk[] = "\x10\x00\x00\x00\x00\x00\x00\x00{not json at all";
  std::fwrite(junk, 1, sizeof junk - 1, fp);
  std::fclose(fp);
  EXPECT_KVR(KVR_ERR_CORRUPT, kvr_tensors_open(path.c_str(), &f));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_open(path.c_str(), nullptr));
  std::remove(path.c_str());

  // NULL handles and outputs.
  std::size_t n = 0;
  const char* s = nullptr;
  kvr_tensor_ref r{};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_count(nullptr, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_name_at(nullptr, 0, &s));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_metadata_get(nullptr, "k", &s));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_get(nullptr, nullptr, &r));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_read_into(nullptr, nullptr, data, 4, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_read_into_direct(nullptr, nullptr, data, 4, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_tensors_read_into_device(nullptr, nullptr, 0x1000, 4, 0, &n));
  kvr_tensors_close(nullptr);

  kvr::write_tensors(path, &good, 1);
  kvr::TensorFile tf(path);
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensors_name_at(tf.get(), 1, &s));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensors_metadata_get(tf.get(), "nope", &s));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_metadata_get(tf.get(), nullptr, &s));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensors_get(tf.get(), "zz", &r));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_get(tf.get(), "a", nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_read_into(tf.get(), "a", nullptr, 16, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensors_read_into_direct(tf.get(), "a", nullptr, 16, &n));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensors_read_into_direct(tf.get(), "zz", data, 16, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_tensors_read_into_device(tf.get(), "a", 0, 16, 0, &n));
  EXPECT_KVR(KVR_OK, kvr_tensors_get(tf.get(), nullptr, &r));  // the only tensor
  EXPECT_EQ(r.nbytes, 16u);
  std::remove(path.c_str());
}

TEST(Tensors, LazyDirectoryLifetimeAndCleanup) {
  std::vector<uint8_t> bytes(4096);
  for (std::size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(i * 7);
  const uint64_t shape[1] = {4096};
  kvr_tensor t = tensor("w", KVR_DTYPE_U8, 1, shape, nullptr, bytes.data());
  std::string path;
  std::vector<kvr::LazyTensor> refs;
  {
    kvr::TensorDir dir;
    path = dir.path();
    EXPECT_TRUE(exists(path));
    for (int i = 0; i < 4; i++) dir.put("item" + std::to_string(i), &t, 1);
    for (int i = 0; i < 4; i++) refs.push_back(dir.get_ref("item" + std::to_string(i)));
    EXPECT_THROW(dir.get_ref("missing"), kvr::Error);
  }
  EXPECT_TRUE(exists(path)) << "references keep the directory";
  // Concurrent materialize from threads.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int k = 0; k < 4; k++) {
    threads.emplace_back([&, k] {
      std::vector<uint8_t> buf(4096);
      for (int round = 0; round < 20; round++) {
        const auto& r = refs[(k + round) % 4];
        if (r.materialize(buf.data(), buf.size()) == 4096 && buf == bytes) ok++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 80);
  kvr_tensor_ref v = refs[0].view();
  EXPECT_EQ(v.nbytes, 4096u);
  EXPECT_EQ(std::memcmp(v.data, bytes.data(), 4096), 0);
  refs.clear();
  EXPECT_FALSE(exists(path)) << "deleted with the last reference";

  // Cleanup while a reference exists: later materialize fails with CLOSED.
  kvr::TensorDir dir2;
  dir2.put("x", &t, 1);
  kvr::LazyTensor r = dir2.get_ref("x", "w");
  dir2.cleanup();
  EXPECT_FALSE(exists(dir2.path()));
  std::vector<uint8_t> buf(4096);
  std::size_t n = 0;
  EXPECT_KVR(KVR_ERR_CLOSED, kvr_tensor_lazy_materialize(r.get(), buf.data(), buf.size(), &n));
  kvr_tensor_ref rr{};
  EXPECT_KVR(KVR_ERR_CLOSED, kvr_tensor_lazy_view(r.get(), &rr));
  EXPECT_KVR(KVR_ERR_CLOSED, kvr_tensor_dir_put(dir2.get(), "y", &t, 1, nullptr, 0, 0));

  // Bad inputs.
  kvr_tensor_dir* d = nullptr;
  kvr_tensor_lazy* l = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_open(nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_NOT_FOUND, kvr_tensor_dir_open("/nonexistent/parent", &d));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_put(nullptr, "a", &t, 1, nullptr, 0, 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_get_ref(nullptr, "a", nullptr, &l));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_cleanup(nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_dir_path(nullptr, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_lazy_materialize(nullptr, buf.data(), 1, &n));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_tensor_lazy_view(nullptr, &rr));
  kvr_tensor_dir_close(nullptr);
  kvr_tensor_lazy_free(nullptr);
}

TEST(Tensors, RegionBlocksExportAndImport) {
  const char* tmp = std::getenv("TMPDIR");
  kvr::RegionOptions o;
  o.dir = tmp ? tmp : "/tmp";
  o.num_blocks = 8;
  o.cpu_page_size = 4096;
  o.num_workers = 2;
  o.rank = KVR_RANK_SCHEDULER;
  o.name = unique_name("exp_src");
  kvr::Region src(o);
  kvr::View v = src.row_view();
  for (uint64_t b = 0; b < 8; b++) std::memset(v.block(b).data(), static_cast<int>(b + 1), 8192);
  const std::string path = tmp_path("blocks");
  const uint64_t ids[3] = {5, 0, 7};
  kvr::export_blocks(src, ids, 3, path, KVR_TENSORS_ALIGN_4K);
  {
    kvr::TensorFile f(path);  // plain safetensors with the layout in its metadata
    EXPECT_EQ(f.metadata("kvr.kind"), "region_blocks");
    EXPECT_EQ(f.tensor("blocks").nbytes, 3u * 8192u);
  }
  o.name = unique_name("exp_dst");
  kvr::Region dst(o);
  EXPECT_EQ(kvr::import_blocks(dst, path), 3u);
  kvr::View dv = dst.row_view();
  EXPECT_EQ(dv.block(5)[100], 6);
  EXPECT_EQ(dv.block(7)[8191], 8);
  EXPECT_EQ(dv.block(1)[0], 0);
  o.name = unique_name("exp_other");
  o.cpu_page_size = 2048;
  kvr::Region other(o);
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_region_import(other.get(), path.c_str(), nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_export(src.get(), ids, 0, path.c_str(), 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_export(src.get(), nullptr, 3, path.c_str(), 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_export(nullptr, ids, 3, path.c_str(), 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_export(src.get(), ids, 3, nullptr, 0));
  const uint64_t out_of_range[1] = {8};
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT,
             kvr_region_export(src.get(), out_of_range, 1, path.c_str(), 0));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_import(nullptr, path.c_str(), nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_import(dst.get(), nullptr, nullptr));
  std::remove(path.c_str());
}
