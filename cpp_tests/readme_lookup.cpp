// The README's lookup example, compiled and run as a test (check_readme.cmake keeps the two
// equal).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

// BEGIN README
#include <kvr.hpp>

#include <string>
#include <vector>

// vLLM asks per key, HIT or MISS, without blocking on I/O: one presence byte per key.
// Keys this process has seen are answered from memory; others cost one stat each.
std::vector<std::uint8_t> lookup_example(const kvr::FsStore& store,
                                         const std::vector<std::string>& block_hashes) {
  std::vector<kvr::Key> keys;
  for (const auto& h : block_hashes) keys.push_back(kvr::key(h));
  kvr::Presence p = store.lookup({keys.data(), keys.size()});
  return p.present;  // p.hits of them are 1
}
// END README

TEST(Readme, LookupExampleRuns) {
  char tmpl[] = "/tmp/kvr_readme_lookup_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  {
    kvr::FsOptions o;
    o.root = tmpl;
    o.ns = "readme";
    kvr::FsStore store(o);
    std::uint8_t b[64] = {};
    const kvr::Segment one[] = {kvr::segment(b, sizeof b)};
    store.store(kvr::key("hit"), {one, 1});
    EXPECT_EQ(lookup_example(store, {"hit", "miss"}), (std::vector<std::uint8_t>{1, 0}));
  }
  std::filesystem::remove_all(tmpl);
}
