// Tensor files at URLs through the installed C ABI and kvr.hpp: file:// (the local path,
// mapped) and s3://bucket/key against the S3 test server (scripts/seaweedfs.sh; its endpoint
// in KVR_S3_TEST_ENDPOINT, set by scripts/run-tests.sh), with the bad inputs and an
// unreachable server.
#include <kvr.hpp>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

std::string unique_url(const char* what) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return "s3://kvr-test/cpp-urls-" + std::string(what) + "-" + std::to_string(getpid()) + "-" +
         std::to_string(ts.tv_nsec) + ".safetensors";
}

kvr::ObjOptions s3(const std::string& endpoint) {
  kvr::ObjOptions o;
  o.endpoint = endpoint;
  o.request_timeout_ms = 10000;
  return o;
}

// Two tensors: "a" (float [2, 3]) and "b" (uint8 [5000]).
struct Sample {
  std::vector<float> a{0.f, 1.f, 2.f, 3.f, 4.f, 5.f};
  std::vector<uint8_t> b = std::vector<uint8_t>(5000);
  uint64_t sa[2] = {2, 3};
  uint64_t sb[1] = {5000};
  kvr_tensor t[2];
  Sample() {
    for (size_t i = 0; i < b.size(); i++) b[i] = static_cast<uint8_t>(i * 7);
    t[0] = kvr_tensor{"a", KVR_DTYPE_F32, 2, sa, nullptr, a.data()};
    t[1] = kvr_tensor{"b", KVR_DTYPE_U8, 1, sb, nullptr, b.data()};
  }
};

}  // namespace

TEST(TensorUrls, BadInputs) {
  kvr_tensor_file* f = nullptr;
  Sample s;
  EXPECT_EQ(kvr_tensors_open(nullptr, &f), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(kvr_tensors_open_url(nullptr, nullptr, &f), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(kvr_tensors_open_url("s3://kvr-test/x", nullptr, nullptr), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(kvr_tensors_write_url(nullptr, nullptr, s.t, 2, nullptr, 0, 0),
            KVR_ERR_INVALID_ARGUMENT);
  // Unknown scheme: unsupported, naming it.
  EXPECT_EQ(kvr_tensors_open("gs://bucket/key", &f), KVR_ERR_UNSUPPORTED);
  EXPECT_NE(kvr_test::last_error().find("gs://"), std::string::npos) << kvr_test::last_error();
  EXPECT_EQ(kvr_tensors_write("gs://bucket/key", s.t, 2, nullptr, 0, 0), KVR_ERR_UNSUPPORTED);
  // An s3 URL without bucket or key.
  EXPECT_EQ(kvr_tensors_open("s3://kvr-test", &f), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(kvr_tensors_open("s3:///key", &f), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(kvr_tensors_write("s3://kvr-test/", s.t, 2, nullptr, 0, 0), KVR_ERR_INVALID_ARGUMENT);
  // A file URL with a remote host.
  EXPECT_EQ(kvr_tensors_open("file://elsewhere/x", &f), KVR_ERR_INVALID_ARGUMENT);
  // A config too small to be one.
  kvr_obj_config c;
  ASSERT_EQ(kvr_obj_config_default(&c), KVR_OK);
  c.struct_size = 4;
  EXPECT_EQ(kvr_tensors_open_url("s3://kvr-test/x", &c, &f), KVR_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(f, nullptr);
}

TEST(TensorUrls, ServerDownIsUnavailableWithinTheTimeout) {
  kvr_obj_config c;
  ASSERT_EQ(kvr_obj_config_default(&c), KVR_OK);
  c.endpoint = "http://127.0.0.1:1";  // nothing listens there
  c.connect_timeout_ms = 500;
  c.request_timeout_ms = 2000;
  Sample s;
  auto start = std::chrono::steady_clock::now();
  kvr_tensor_file* f = nullptr;
  EXPECT_EQ(kvr_tensors_open_url("s3://kvr-test/x.safetensors", &c, &f), KVR_ERR_UNAVAILABLE);
  EXPECT_NE(kvr_test::last_error().find("127.0.0.1:1"), std::string::npos)
      << kvr_test::last_error();
  EXPECT_EQ(kvr_tensors_write_url("s3://kvr-test/x.safetensors", &c, s.t, 2, nullptr, 0, 0),
            KVR_ERR_UNAVAILABLE);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  try {
    kvr::ObjOptions o;
    o.endpoint = "http://127.0.0.1:1";
    o.connect_timeout_ms = 500;
    o.request_timeout_ms = 2000;
    kvr::TensorFile file("s3://kvr-test/x.safetensors", o);
    FAIL() << "opened a file on a server that is not there";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_UNAVAILABLE) << e.what();
  }
}

TEST(TensorUrls, S3RoundTripAndContracts) {
  ENDPOINT_OR_SKIP(ep);
  Sample s;
  const std::string url = unique_url("rt");
  const kvr_kv md[] = {{"who", "cpp"}};
  kvr::write_tensors(url, s3(ep), s.t, 2, md, 1, KVR_TENSORS_ALIGN_4K);
  kvr::TensorFile f(url, s3(ep));
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f.name_at(0), "a");
  EXPECT_EQ(f.metadata("who"), "cpp");
  // read_into and read_into_direct: the tensor's bytes.
  std::vector<uint8_t> out(5000, 0);
  EXPECT_EQ(f.read_into("b", out.data(), out.size()), 5000u);
  EXPECT_EQ(out, s.b);
  std::fill(out.begin(), out.end(), 0);
  EXPECT_EQ(f.read_into_direct("b", out.data(), out.size()), 5000u);
  EXPECT_EQ(out, s.b);
  size_t need = 0;
  EXPECT_EQ(kvr_tensors_read_into(f.get(), "b", out.data(), 10, &need), KVR_ERR_TOO_SMALL);
  EXPECT_EQ(need, 5000u);
  // get: fetched once into memory the handle owns, aligned, the same pointer each time.
  kvr_tensor_ref r = f.tensor("a");
  ASSERT_EQ(r.nbytes, 24u);
  EXPECT_EQ(r.rank, 2u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data) % 4096, 0u);
  EXPECT_EQ(std::memcmp(r.data, s.a.data(), 24), 0);
  EXPECT_EQ(f.tensor("a").data, r.data);
  // Device copies need CUDA: without it, CUDA_UNAVAILABLE before any request.
  if (kvr_cuda_available() != KVR_OK) {
    EXPECT_EQ(kvr_tensors_read_into_device(f.get(), "b", 1, 5000, 0, nullptr),
              KVR_ERR_CUDA_UNAVAILABLE);
  }
  // A missing object.
  const kvr::ObjOptions o = s3(ep);
  kvr_obj_config c = kvr::tensor_url_config(o);
  kvr_tensor_file* h = nullptr;
  EXPECT_EQ(kvr_tensors_open_url(unique_url("absent").c_str(), &c, &h), KVR_ERR_NOT_FOUND);
  EXPECT_EQ(h, nullptr);
}

TEST(TensorUrls, PlainEntryPointsTakeTheAwsEnvironment) {
  ENDPOINT_OR_SKIP(ep);
  // gtest_discover_tests runs each test in its own process: the variable stays here.
  ASSERT_EQ(setenv("AWS_ENDPOINT_URL", ep.c_str(), 1), 0);
  Sample s;
  const std::string url = unique_url("env");
  ASSERT_EQ(kvr_tensors_write(url.c_str(), s.t, 2, nullptr, 0, 0), KVR_OK)
      << kvr_test::last_error();
  kvr::TensorFile f(url);
  std::vector<float> a(6);
  EXPECT_EQ(f.read_into("a", a.data(), 24), 24u);
  EXPECT_EQ(a, s.a);
  unsetenv("AWS_ENDPOINT_URL");
}

TEST(TensorUrls, FileUrlsAreLocalPaths) {
  char tmpl[] = "/tmp/kvr_tensor_urls_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  Sample s;
  const std::string path = std::string(tmpl) + "/w.safetensors";
  kvr::write_tensors("file://" + path, s.t, 2);
  ASSERT_TRUE(std::filesystem::exists(path));
  kvr::TensorFile f("file://" + path);
  kvr::TensorFile same(path);
  EXPECT_EQ(f.size(), 2u);
  kvr_tensor_ref r = f.tensor("b");
  EXPECT_EQ(std::memcmp(r.data, s.b.data(), 5000), 0);
  EXPECT_EQ(same.tensor("b").nbytes, r.nbytes);
  std::filesystem::remove_all(tmpl);
}
