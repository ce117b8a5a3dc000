// The README's namespace example, compiled and run as a test (check_readme.cmake).
#include <gtest/gtest.h>
#include <fstream>
#include <sstream>

#include "test_util.hpp"

// BEGIN README
#include <kvr.hpp>

#include <string>

// One namespace per model revision, KV dtype, block geometry, parallel position and tenant:
// blocks of incompatible engines never meet, and the same engine on another host finds its
// blocks under the same name.
kvr::Namespace engine_namespace(std::uint32_t tp_rank, const std::string& tenant) {
  kvr::Namespace ns;
  ns.model_id = "meta-llama/Llama-3.1-8B-Instruct";
  ns.model_revision = "0e9e39f249a16976918f6564b8830bc894c89659";
  ns.kv_dtype = "bf16";
  ns.tokens_per_block = 16;
  ns.num_layers = 32;
  ns.num_kv_heads = 4;  // this rank's share of 8
  ns.head_dim = 128;
  ns.bytes_per_block = 2ull * 32 * 4 * 128 * 16 * 2;  // K and V, bf16
  ns.tp_size = 2;
  ns.tp_rank = tp_rank;
  ns.engine_fingerprint = "vllm-0.11 layout=NHD";
  ns.tenant_salt = tenant;  // only its SHA-256 is ever written
  return ns;
}

kvr::FsStore open_shared_cache(const std::string& root, const kvr::Namespace& ns) {
  kvr::FsOptions opt;
  opt.root = root;
  opt.manifest = ns;  // namespace = ns.name(); <root>/<name>/NAMESPACE.json records the fields
  return kvr::FsStore(opt);
}

kvr::Disk open_local_spill(const std::string& path, const kvr::Namespace& ns) {
  kvr::DiskOptions opt;
  opt.path = path;
  opt.slot_size = ns.bytes_per_block;
  opt.num_slots = 1024;
  opt.ns = ns.name();  // recorded in the file: a reopen for another namespace fails
  return kvr::Disk(opt);
}
// END README

TEST(Readme, NamespaceExampleRuns) {
  kvr_test::TempDir dir("kvr_readme_ns");
  const std::string& root = dir.path;
  kvr::Namespace r0 = engine_namespace(0, "tenant-a");
  EXPECT_EQ(r0.name(), engine_namespace(0, "tenant-a").name());
  EXPECT_NE(r0.name(), engine_namespace(1, "tenant-a").name());
  EXPECT_NE(r0.name(), engine_namespace(0, "tenant-b").name());
  {
    kvr::FsStore store = open_shared_cache(root, r0);
    std::ifstream manifest(root + "/" + r0.name() + "/NAMESPACE.json");
    std::stringstream text;
    text << manifest.rdbuf();
    EXPECT_NE(text.str().find("\"kv_dtype\": \"bf16\""), std::string::npos) << text.str();
    EXPECT_EQ(text.str().find("tenant-a"), std::string::npos) << "the salt is never written";
  }
  const std::string spill = root + "/spill.kvr";
  { kvr::Disk d = open_local_spill(spill, r0); }
  try {
    kvr::Disk other = open_local_spill(spill, engine_namespace(1, "tenant-a"));
    ADD_FAILURE() << "a slot file of another namespace opened";
  } catch (const kvr::Error& e) {
    EXPECT_EQ(e.status(), KVR_ERR_LAYOUT_MISMATCH);
  }
}
