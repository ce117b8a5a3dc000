// Library-wide C ABI: version, status strings, thread-local error messages, config defaults.
#include <kvr.hpp>

#include <dlfcn.h>

#include <cstring>
#include <string>
#include <thread>

#include "test_util.hpp"

// The version has one source (Cargo.toml): the library reports what the installed CMake
// package says (kvr_VERSION, passed in by CMakeLists.txt).
TEST(Basics, VersionAndAbi) {
  EXPECT_STREQ(kvr_version(), KVR_PACKAGE_VERSION);
  EXPECT_EQ(kvr_abi_version(), static_cast<uint32_t>(KVR_ABI_VERSION));
}

// The soname the dynamic loader resolved this test against is libkvr.so.<KVR_ABI_VERSION>,
// the number in the header (RTLD_NOLOAD only finds an already loaded object of that soname).
TEST(Basics, SonameCarriesTheAbiVersion) {
  const std::string soname = "libkvr.so." + std::to_string(KVR_ABI_VERSION);
  void* h = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr) << soname << " is not loaded: " << dlerror();
  dlclose(h);
}

TEST(Basics, StatusStrings) {
  EXPECT_STREQ(kvr_status_str(KVR_OK), "KVR_OK");
  EXPECT_STREQ(kvr_status_str(KVR_ERR_NOT_FOUND), "KVR_ERR_NOT_FOUND");
  EXPECT_STREQ(kvr_status_str(KVR_ERR_CUDA_UNAVAILABLE), "KVR_ERR_CUDA_UNAVAILABLE");
  EXPECT_STREQ(kvr_status_str(12345), "KVR_ERR_UNKNOWN");
  EXPECT_STREQ(kvr_status_str(-1), "KVR_ERR_UNKNOWN");
  EXPECT_EQ(static_cast<int>(KVR_OK), 0);
}

TEST(Basics, ErrorMessageIsThreadLocal) {
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_open(nullptr, nullptr));
  std::string here = kvr_last_error_message();
  EXPECT_NE(here.find("NULL"), std::string::npos) << here;
  std::string there = "unset";
  std::thread([&] { there = kvr_last_error_message(); }).join();
  EXPECT_EQ(there, "");  // another thread has had no failure
  EXPECT_EQ(std::string(kvr_last_error_message()), here);
}

TEST(Basics, ConfigDefaults) {
  kvr_region_config c;
  std::memset(&c, 0xff, sizeof c);
  ASSERT_KVR(KVR_OK, kvr_region_config_default(&c));
  EXPECT_EQ(c.struct_size, sizeof(kvr_region_config));
  EXPECT_EQ(c.name, nullptr);
  EXPECT_EQ(c.dir, nullptr);
  EXPECT_EQ(c.num_workers, 1u);
  EXPECT_EQ(c.rank, 0);
  EXPECT_EQ(c.flags, static_cast<uint32_t>(KVR_REGION_CREATE));
  EXPECT_EQ(c.attach_timeout_ms, 10000u);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_region_config_default(nullptr));
}

TEST(Basics, CppExceptionCarriesStatusAndMessage) {
  kvr::RegionOptions o;
  o.name = "ok";
  o.num_blocks = 0;  // invalid
  o.cpu_page_size = 4096;
  try {
    kvr::Region r(o);
    FAIL() << "expected kvr::Error";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("KVR_ERR_INVALID_ARGUMENT: region layout must have non-zero sizes"), std::string::npos) << e.what();
  }
}

TEST(Basics, CudaAvailabilityIsAStatus) {
  kvr_status s = kvr_cuda_available();
  if (s == KVR_OK) {
    SUCCEED() << "CUDA available";
  } else {
    EXPECT_EQ(s, KVR_ERR_CUDA_UNAVAILABLE);
    EXPECT_NE(std::string(kvr_last_error_message()).find("CUDA unavailable"), std::string::npos);
  }
}
