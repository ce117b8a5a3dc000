// Namespace names through the installed C ABI and kvr.hpp: the golden name (the same as
// the Rust test pins), determinism, and bad inputs.
#include <kvr.hpp>

#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

kvr_namespace_config example(const std::string& model) {
  kvr_namespace_config c;
  kvr_namespace_config_default(&c);
  static const char rev[] = "0e9e39f249a16976918f6564b8830bc894c89659";
  static const char salt[] = "tenant-42";
  c.model_id = model.c_str();
  c.model_revision = rev;
  c.kv_dtype = "bf16";
  c.tokens_per_block = 16;
  c.num_layers = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.bytes_per_block = 2ull * 32 * 8 * 128 * 16 * 2;
  c.tp_size = 4;
  c.tp_rank = 1;
  c.engine_fingerprint = "vllm-0.11.0 layout=NHD";
  c.tenant_salt = reinterpret_cast<const uint8_t*>(salt);
  c.tenant_salt_len = sizeof(salt) - 1;
  return c;
}

std::string name_of(const kvr_namespace_config& c) {
  char buf[256];
  size_t need = 0;
  kvr_status s = kvr_namespace_name(&c, buf, sizeof buf, &need);
  if (s != KVR_OK) return std::string("error: ") + kvr_status_str(s);
  return std::string(buf, need - 1);
}

const std::string kModel = "meta-llama/Llama-3.1-8B-Instruct";

}  // namespace

TEST(Namespace, GoldenNameNeverDrifts) {
  EXPECT_EQ(name_of(example(kModel)),
            "meta-llama_Llama-3.1-8B-Instruct.bf16.tp1of4.pp0.cp0.f5c0b717dd2b549a550f3303f019dc61");
}

TEST(Namespace, DefaultsAndDeterminism) {
  kvr_namespace_config c;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_config_default(nullptr));
  ASSERT_KVR(KVR_OK, kvr_namespace_config_default(&c));
  EXPECT_EQ(c.struct_size, sizeof c);
  EXPECT_EQ(c.tp_size, 1u);
  c.model_id = "m";
  EXPECT_EQ(name_of(c), name_of(c));
  kvr_namespace_config d = c;
  d.cp_rank = 1;
  EXPECT_NE(name_of(c), name_of(d));
  kvr::Namespace ns;
  ns.model_id = "m";
  EXPECT_EQ(ns.name(), name_of(c));  // kvr.hpp agrees with the C struct
}

TEST(Namespace, BadInputs) {
  char buf[256];
  size_t need = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(nullptr, buf, sizeof buf, &need));
  kvr_namespace_config c = example(kModel);
  c.model_id = nullptr;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  const std::string empty, too_long(257, 'm'), longest(256, 'm');
  c = example(empty);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(too_long);
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(longest);
  EXPECT_KVR(KVR_OK, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(kModel);
  c.tp_rank = c.tp_size;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(kModel);
  c.tp_size = 0;
  c.tp_rank = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(kModel);
  c.tenant_salt = nullptr;  // NULL with a non-zero length
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  std::vector<uint8_t> big(4097, 1);
  c = example(kModel);
  c.tenant_salt = big.data();
  c.tenant_salt_len = big.size();
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  c = example(kModel);
  c.struct_size = 0;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, buf, sizeof buf, &need));
  // Too small: only the needed size is written; NULL buffer with a non-zero capacity.
  c = example(kModel);
  need = 0;
  char small[8] = "xxxxxxx";
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_namespace_name(&c, small, sizeof small, &need));
  EXPECT_EQ(std::string(small), "xxxxxxx");
  EXPECT_EQ(need, name_of(c).size() + 1);
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_namespace_name(&c, nullptr, 0, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_namespace_name(&c, nullptr, 1024, &need));
  EXPECT_KVR(KVR_OK, kvr_namespace_name(&c, buf, need, nullptr));
  EXPECT_THROW((void)kvr::Namespace{}.name(), kvr::Error);
}

TEST(Namespace, FsManifestAndDiskIdentityThroughTheCApi) {
  kvr_test::TempDir dir("kvr_ns_test");
  kvr_namespace_config ns = example(kModel);
  kvr_fs_config c;
  ASSERT_KVR(KVR_OK, kvr_fs_config_default(&c));
  c.root = dir.path.c_str();
  c.namespace_config = &ns;  // namespace_name NULL: derived
  c.direct_io = KVR_DIRECT_IO_OFF;
  kvr_fs* fs = nullptr;
  ASSERT_KVR(KVR_OK, kvr_fs_open(&c, &fs));
  kvr_fs_close(fs);
  EXPECT_TRUE(std::filesystem::exists(dir.path + "/" + name_of(ns) + "/NAMESPACE.json"));
  c.namespace_name = "not-its-name";
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, &fs));
  kvr_namespace_config bad = ns;
  bad.model_id = nullptr;
  c.namespace_name = nullptr;
  c.namespace_config = &bad;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_fs_open(&c, &fs));

  const std::string path = dir.path + "/slots.kvr", name = name_of(ns);
  kvr_disk_config d;
  ASSERT_KVR(KVR_OK, kvr_disk_config_default(&d));
  d.path = path.c_str();
  d.slot_size = 4096;
  d.num_slots = 4;
  d.direct_io = KVR_DIRECT_IO_OFF;
  d.namespace_name = name.c_str();
  kvr_disk* disk = nullptr;
  ASSERT_KVR(KVR_OK, kvr_disk_open(&d, &disk));
  kvr_disk_close(disk);
  d.namespace_name = "other";
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_disk_open(&d, &disk));
  d.namespace_name = nullptr;
  EXPECT_KVR(KVR_ERR_LAYOUT_MISMATCH, kvr_disk_open(&d, &disk));
  d.namespace_name = "";
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&d, &disk));
  const std::string too_long(1025, 'n');
  d.namespace_name = too_long.c_str();
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_disk_open(&d, &disk));
  d.namespace_name = name.c_str();
  ASSERT_KVR(KVR_OK, kvr_disk_open(&d, &disk));
  kvr_disk_close(disk);
}
