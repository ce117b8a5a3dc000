// The README's whole-key example, compiled and run as a test (check_readme.cmake keeps the
// two equal).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

// BEGIN README
#include <kvr.hpp>

#include <cstdint>
#include <string>
#include <vector>

// SGLang keys a page by a 64-hex-digit chained hash; vLLM by a 32-byte block hash plus a
// KV-group index. Either goes in whole: kvr stores it in the block and compares it on
// every load, so two keys can never serve each other's bytes.
bool whole_key_example(kvr::FsStore& store, const std::vector<std::uint8_t>& page) {
  const std::string sglang_key(64, 'a');               // hex of the page hash
  std::vector<std::uint8_t> vllm_key(32, 0x5c);        // block hash ...
  vllm_key.push_back(1);                               // ... + KV-group index
  const kvr::Segment one[] = {kvr::segment(page.data(), page.size())};
  store.store(kvr::key(sglang_key), {one, 1});         // a list of one buffer
  store.store(kvr::key(vllm_key), {one, 1});
  std::vector<std::uint8_t> back(page.size());
  const kvr::Segment dst[] = {kvr::segment(back.data(), back.size())};
  return store.load(kvr::key(sglang_key), {dst, 1})    // false on a miss
         && back == page && store.remove_key(kvr::key(vllm_key));
}
// END README

TEST(Readme, WholeKeyExampleRuns) {
  char tmpl[] = "/tmp/kvr_readme_keys_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  {
    kvr::FsOptions o;
    o.root = tmpl;
    o.ns = "readme";
    kvr::FsStore store(o);
    EXPECT_TRUE(whole_key_example(store, std::vector<std::uint8_t>(8192, 7)));
  }
  std::filesystem::remove_all(tmpl);
}
