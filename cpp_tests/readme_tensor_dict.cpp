// The README's lazy tensor directory example, compiled and run as a test (check_readme.cmake
// keeps the two equal).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>

// BEGIN README
#include <kvr.hpp>

#include <cstdint>
#include <string>
#include <vector>

// Tensors of an existing checkpoint as items, next to an item the engine writes itself.
// Nothing is read until a tensor is materialized; the checkpoint is never deleted.
std::vector<std::string> tensor_dict_example(const std::string& checkpoint,
                                             std::vector<std::uint8_t>& k) {
  kvr::TensorDir dir;  // a fresh private directory under $TMPDIR
  dir.adopt({{"layer0.k", checkpoint, "k"}, {"layer0.v", checkpoint, "v"}});
  const std::uint8_t scratch[64] = {};
  const std::uint64_t shape[1] = {sizeof scratch};
  const kvr_tensor t{"t", KVR_DTYPE_U8, 1, shape, nullptr, scratch};
  dir.put("scratch", &t, 1);  // written to the directory's own file

  std::vector<std::string> ids;
  for (const std::string& id : dir) ids.push_back(id);  // insertion order, one snapshot

  if (std::optional<kvr::LazyTensor> ref = dir.find("layer0.k")) {  // nullopt: no such item
    k.resize(ref->view().nbytes);
    ref->materialize(k.data(), k.size());
  }
  dir.remove("scratch");  // its file goes with its last LazyTensor
  return ids;
}  // the directory and its own files are deleted here; the checkpoint stays
// END README

TEST(Readme, TensorDictExampleRuns) {
  char tmpl[] = "/tmp/kvr_readme_tdict_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string ck = std::string(tmpl) + "/model.safetensors";
  const std::uint8_t kb[8] = {1, 2, 3, 4, 5, 6, 7, 8}, vb[4] = {9, 9, 9, 9};
  const std::uint64_t ks[1] = {8}, vs[1] = {4};
  const kvr_tensor kv[2] = {{"k", KVR_DTYPE_U8, 1, ks, nullptr, kb},
                            {"v", KVR_DTYPE_U8, 1, vs, nullptr, vb}};
  kvr::write_tensors(ck, kv, 2);
  std::vector<std::uint8_t> k;
  EXPECT_EQ(tensor_dict_example(ck, k),
            (std::vector<std::string>{"layer0.k", "layer0.v", "scratch"}));
  EXPECT_EQ(k, (std::vector<std::uint8_t>(kb, kb + 8)));
  struct stat st;
  EXPECT_EQ(stat(ck.c_str(), &st), 0) << "the adopted checkpoint is not deleted";
  std::filesystem::remove_all(tmpl);
}
