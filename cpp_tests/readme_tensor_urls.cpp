// The README's tensor-files-at-URLs example, compiled and run as a test against the S3 test
// server (skipped without KVR_S3_TEST_ENDPOINT; check_readme.cmake keeps the two equal).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>
#include <vector>

// BEGIN README
#include <kvr.hpp>

#include <string>
#include <vector>

// Save a layer's K/V to S3 and load one tensor back on another host. The upload streams
// (multipart, bounded memory) and the object appears only once complete; opening reads just
// the header, read_into just that tensor's byte range.
std::vector<float> save_and_load(const std::string& endpoint, const std::string& url,
                                 const std::vector<float>& k, const std::vector<float>& v) {
  kvr::ObjOptions s3;       // empty fields: AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID ...
  s3.endpoint = endpoint;   // e.g. http://127.0.0.1:8333
  std::uint64_t shape[2] = {4, k.size() / 4};
  const kvr_tensor t[] = {{"k", KVR_DTYPE_F32, 2, shape, nullptr, k.data()},
                          {"v", KVR_DTYPE_F32, 2, shape, nullptr, v.data()}};
  kvr::write_tensors(url, s3, t, 2);  // url = "s3://bucket/layer0.safetensors"

  kvr::TensorFile file(url, s3);
  std::vector<float> out(v.size());
  file.read_into("v", out.data(), out.size() * sizeof(float));
  return out;
}
// END README

TEST(Readme, TensorUrlsExampleRuns) {
  const char* ep = getenv("KVR_S3_TEST_ENDPOINT");
  if (ep == nullptr || *ep == '\0') {
    GTEST_SKIP() << "skipped: no S3 test server (run scripts/seaweedfs.sh)";
  }
  std::vector<float> k(64), v(64);
  for (size_t i = 0; i < 64; i++) {
    k[i] = static_cast<float>(i);
    v[i] = static_cast<float>(100 + i);
  }
  const std::string url =
      "s3://kvr-test/cpp-readme-" + std::to_string(getpid()) + "/layer0.safetensors";
  EXPECT_EQ(save_and_load(ep, url, k, v), v);
}
