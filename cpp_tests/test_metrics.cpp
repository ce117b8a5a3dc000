// Logging and metrics through the installed C ABI and kvr.hpp: a re-entrant log callback,
// bad inputs, the metrics text and its buffer protocol.
#include <kvr.hpp>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace {

struct Seen {
  std::mutex m;
  std::vector<std::string> lines;
  std::string root;
  std::atomic<int> depth{0};
};

kvr_fs* open_fs(const std::string& root, const char* ns) {
  kvr_fs_config c;
  kvr_fs_config_default(&c);
  c.root = root.c_str();
  c.namespace_name = ns;
  c.direct_io = KVR_DIRECT_IO_OFF;
  c.read_threads = 1;
  c.write_threads = 1;
  kvr_fs* fs = nullptr;
  return kvr_fs_open(&c, &fs) == KVR_OK ? fs : nullptr;
}

void on_log(uint32_t level, const char* target, const char* message, void* user) {
  auto* seen = static_cast<Seen*>(user);
  {
    std::lock_guard<std::mutex> lock(seen->m);
    seen->lines.push_back(std::to_string(level) + " " + target + " " + message);
  }
  // Re-enter kvr from inside the callback (once): no lock of kvr's may be held here.
  if (seen->depth.fetch_add(1) == 0) {
    kvr_fs_close(open_fs(seen->root, "from-callback"));
    char buf[16];
    size_t need = 0;
    (void)kvr_metrics_text(buf, sizeof buf, &need);
  }
  seen->depth.fetch_sub(1);
}

}  // namespace

TEST(Log, CallbackMayReenterAndLevelsFilter) {
  kvr_test::TempDir dir("kvr_log_test");
  Seen seen;
  seen.root = dir.path;
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_set_log_callback(6, on_log, &seen));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_set_log_callback(UINT32_MAX, on_log, &seen));
  ASSERT_KVR(KVR_OK, kvr_set_log_callback(KVR_LOG_INFO, on_log, &seen));
  kvr_fs* fs = open_fs(dir.path, "outer");
  ASSERT_NE(fs, nullptr) << kvr_last_error_message();
  kvr_fs_close(fs);
  ASSERT_KVR(KVR_OK, kvr_set_log_callback(KVR_LOG_OFF, on_log, &seen));
  size_t n = seen.lines.size();
  bool outer = false, inner = false;
  for (const auto& l : seen.lines) {
    outer |= l.find("kvr::io") != std::string::npos && l.find("/outer") != std::string::npos;
    inner |= l.find("/from-callback") != std::string::npos;
  }
  EXPECT_TRUE(outer && inner) << n << " lines";
  kvr_fs_close(open_fs(dir.path, "silent"));
  EXPECT_EQ(seen.lines.size(), n) << "KVR_LOG_OFF delivers nothing";
  // Back to the default (stderr): the callback's user data may be freed now.
  ASSERT_KVR(KVR_OK, kvr_set_log_callback(KVR_LOG_WARN, nullptr, nullptr));
  kvr_fs_close(open_fs(dir.path, "default"));
  EXPECT_EQ(seen.lines.size(), n);
}

TEST(Log, CppWrapperReplacesAndFreesSinks) {
  kvr_test::TempDir dir("kvr_log_cpp");
  std::atomic<int> a{0}, b{0};
  kvr::set_log_callback(KVR_LOG_DEBUG, [&](uint32_t, const char*, const char*) { a++; });
  kvr_fs_close(open_fs(dir.path, "one"));
  kvr::set_log_callback(KVR_LOG_DEBUG, [&](uint32_t, const char*, const char*) { b++; });
  int a_before = a.load();
  kvr_fs_close(open_fs(dir.path, "two"));
  EXPECT_GT(a_before, 0);
  EXPECT_EQ(a.load(), a_before);
  EXPECT_GT(b.load(), 0);
  kvr::set_log_callback(KVR_LOG_WARN, nullptr);
  EXPECT_THROW(kvr::set_log_callback(9, nullptr), kvr::Error);
}

TEST(Metrics, TextListsOpenHandlesAndBufferProtocol) {
  kvr_test::TempDir dir("kvr_metrics_test");
  kvr_fs* fs = open_fs(dir.path, "metrics-cpp");
  ASSERT_NE(fs, nullptr);
  kvr_block_key k{};
  k.bytes[0] = 1;
  char block[4096] = {1};
  ASSERT_KVR(KVR_OK, kvr_store_block(fs, &k, block, sizeof block));
  ASSERT_KVR(KVR_OK, kvr_load_block(fs, &k, block, sizeof block));
  // A prefix lookup is one lookup, however many keys it asks about (as in the Rust API and
  // the object tier): here two keys are asked, the second absent.
  kvr_block_key prefix[3] = {k, k, k};
  prefix[1].bytes[0] = 2;
  size_t hits = 9;
  ASSERT_KVR(KVR_OK, kvr_fs_lookup_prefix(fs, prefix, 3, &hits));
  EXPECT_EQ(hits, 1u);

  size_t need = 0;
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_metrics_text(nullptr, 0, &need));
  EXPECT_GT(need, 1u);
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_metrics_text(nullptr, 0, nullptr));
  EXPECT_KVR(KVR_ERR_INVALID_ARGUMENT, kvr_metrics_text(nullptr, need + 4096, &need));
  std::string small(8, 'x');
  EXPECT_KVR(KVR_ERR_TOO_SMALL, kvr_metrics_text(&small[0], small.size(), &need));
  EXPECT_EQ(small, std::string(8, 'x'));
  std::string text = kvr::metrics_text();
  const std::string labels = "{tier=\"fs\",namespace=\"metrics-cpp\",path=\"" + dir.path + "/metrics-cpp\"}";
  EXPECT_NE(text.find("kvr_stores_total" + labels + " 1"), std::string::npos) << text;
  EXPECT_NE(text.find("kvr_hits_total" + labels + " 1"), std::string::npos) << text;
  const std::string lookups = "kvr_op_latency_seconds_count{tier=\"fs\",namespace=\"metrics-cpp\",path=\"" +
                              dir.path + "/metrics-cpp\",op=\"lookup\"} 1\n";
  EXPECT_NE(text.find(lookups), std::string::npos) << text;
  kvr_fs_close(fs);
  EXPECT_EQ(kvr::metrics_text().find("metrics-cpp"), std::string::npos);

  // Handles opening and closing while another thread renders.
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    for (int i = 0; !stop; i++) kvr_fs_close(open_fs(dir.path, ("churn" + std::to_string(i % 4)).c_str()));
  });
  for (int i = 0; i < 200; i++) (void)kvr::metrics_text();
  stop = true;
  churn.join();
}
