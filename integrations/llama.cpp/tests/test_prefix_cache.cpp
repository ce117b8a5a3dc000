// test_prefix_cache.cpp: correctness of the kvr prefix cache inside llama.cpp, on the tiny
// random model. One binary, one scenario per ctest test:
//   exact DIR MODEL                 restore k blocks + decode the rest == full recompute, bit for bit
//   store DIR MODEL / reuse DIR MODEL   a second process reuses the first one's fs blocks
//   corrupt DIR MODEL               a corrupted block (fs file, slot file) is a miss, never loaded
//   mismatch DIR MODEL OTHER_MODEL  another model file, KV type or tenant never hits
//   kill-saver DIR MODEL            savers SIGKILLed mid-save: later hits are exact, the rest miss
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kvr_llama/prefix_cache.hpp"
#include "llama_session.hpp"

namespace fs = std::filesystem;
using namespace kvr_llama;

namespace {

constexpr std::uint32_t kBlock = 32;   // tokens per block in the tests
constexpr std::uint32_t kUbatch = 16;  // divides kBlock: restores are bit-exact
constexpr std::uint32_t kCtx = 1024;

int g_failures = 0;

#define EXPECT(cond)                                                                  \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: expectation failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                   \
    }                                                                                 \
  } while (0)

CacheConfig cache_config(const Session& s, const fs::path& dir, bool with_fs, bool with_slot) {
  CacheConfig c;
  c.model_path = s.model_path();
  c.context_params = s.params();
  c.block_tokens = kBlock;
  c.scratch_seq = kScratchSeq;
  if (with_fs) c.fs_root = (dir / "fs").string();
  if (with_slot) c.slot_file = (dir / "slots.kvr").string();
  c.slot_count = 64;
  return c;
}

// The prompt of request `r`: `shared` blocks common to every request, then its own tokens.
std::vector<llama_token> prompt(const Session& s, std::size_t shared_tokens, std::uint64_t r,
                                std::size_t own_tokens) {
  std::vector<llama_token> t = random_tokens(shared_tokens, 7, s.n_vocab());
  const std::vector<llama_token> own = random_tokens(own_tokens, 1000 + r, s.n_vocab());
  t.insert(t.end(), own.begin(), own.end());
  return t;
}

std::vector<float> recompute_logits(Session& s, const std::vector<llama_token>& tokens) {
  s.clear();
  s.decode_from(tokens, 0);
  return s.last_logits();
}

// Restores what the cache has, decodes the rest, returns the logits; `*restored` gets the
// number of tokens the cache supplied.
std::vector<float> cached_logits(Session& s, PrefixCache& cache, const std::vector<llama_token>& tokens,
                                 std::size_t* restored) {
  s.clear();
  *restored = cache.restore(s.ctx(), kMainSeq, tokens);
  s.decode_from(tokens, *restored);
  return s.last_logits();
}

bool same_logits(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0) return true;
  double max_diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) max_diff = std::max(max_diff, std::fabs(double(a[i]) - b[i]));
  std::fprintf(stderr, "logits differ: max |diff| = %g\n", max_diff);
  return false;
}

fs::path fresh_dir(const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Flips one byte inside the first stored block payload found in `file` (after kvr's own
// header, so the checksum covers it). Returns false if the file holds no block.
bool corrupt_first_block_in(const fs::path& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const std::size_t at = bytes.find("KVRLLAM2");
  if (at == std::string::npos) return false;
  // The block's header page (header + kBlock token ids, padded to 4096), then its state:
  // the byte lands in the first layer's K rows.
  const std::size_t victim = at + 4096 + 100;
  f.clear();
  f.seekp(static_cast<std::streamoff>(victim));
  const char flipped = static_cast<char>(bytes[victim] ^ 0x5a);
  f.write(&flipped, 1);
  return static_cast<bool>(f);
}

int test_exact(const std::string& dir_arg, const std::string& model) {
  const fs::path dir = fresh_dir(dir_arg);
  Session s(model, session_params(kCtx, kUbatch));
  std::optional<PrefixCache> cache_owner(std::in_place, s.ctx(), cache_config(s, dir, true, true));
  PrefixCache& cache = *cache_owner;
  // Request 0: 5 shared blocks + 20 own tokens; saved after its prefill.
  const std::vector<llama_token> first = prompt(s, 5 * kBlock, 0, 20);
  s.clear();
  s.decode_from(first, 0);
  EXPECT(cache.save(s.ctx(), kMainSeq, first) == 5);
  EXPECT(cache.save(s.ctx(), kMainSeq, first) == 0);  // nothing new to store

  // Requests sharing 1..5 blocks of it, with distinct tails (some ending on a block edge).
  for (std::size_t k = 0; k <= 5; ++k) {
    for (std::size_t tail : {1, 7, 32, 45}) {
      std::vector<llama_token> p(first.begin(), first.begin() + static_cast<long>(k * kBlock));
      const auto own = random_tokens(tail, 50 + k * 100 + tail, s.n_vocab());
      p.insert(p.end(), own.begin(), own.end());
      const std::vector<float> want = recompute_logits(s, p);
      std::size_t restored = 0;
      const std::vector<float> got = cached_logits(s, cache, p, &restored);
      // At least one token is always left to decode.
      const std::size_t expect_blocks = std::min(k, (p.size() - 1) / kBlock);
      EXPECT(restored == expect_blocks * kBlock);
      EXPECT(same_logits(want, got));
    }
  }
  // Two prompts sharing 3 of 5 blocks share those 3: the second stores only its 2 new ones.
  std::vector<llama_token> second(first.begin(), first.begin() + 3 * kBlock);
  const auto own = random_tokens(2 * kBlock + 5, 99, s.n_vocab());
  second.insert(second.end(), own.begin(), own.end());
  std::size_t restored = 0;
  const std::vector<float> got = cached_logits(s, cache, second, &restored);
  EXPECT(restored == 3 * kBlock);
  EXPECT(same_logits(recompute_logits(s, second), got));
  s.clear();
  s.decode_from(second, 0);
  EXPECT(cache.save(s.ctx(), kMainSeq, second) == 2);
  EXPECT(cache.stats().slot_hits > 0);
  EXPECT(cache.stats().rejected == 0);

  cache_owner.reset();  // the slot file has one owner at a time

  // Restore windows of 1 (a ring of 2 staging slots, reused by every other block) and of
  // more blocks than a prompt has: the same 5 blocks, the same exact logits, from either tier.
  const std::vector<llama_token> five(first.begin(), first.begin() + 5 * kBlock + 3);
  const std::vector<float> want = recompute_logits(s, five);
  for (std::size_t window : {1, 16}) {
    for (bool slot_tier : {true, false}) {
      CacheConfig c = cache_config(s, dir, !slot_tier, slot_tier);
      c.restore_window = window;
      PrefixCache other(s.ctx(), c);
      const std::vector<float> got5 = cached_logits(s, other, five, &restored);
      EXPECT(restored == 5 * kBlock);
      EXPECT(same_logits(want, got5));
      EXPECT((slot_tier ? other.stats().slot_hits : other.stats().fs_hits) == 5);
    }
  }
  return 0;
}

int test_store(const std::string& dir_arg, const std::string& model) {
  const fs::path dir = fresh_dir(dir_arg);
  Session s(model, session_params(kCtx, kUbatch));
  PrefixCache cache(s.ctx(), cache_config(s, dir, true, false));
  const std::vector<llama_token> p = prompt(s, 6 * kBlock, 0, 10);
  s.clear();
  s.decode_from(p, 0);
  EXPECT(cache.save(s.ctx(), kMainSeq, p) == 6);
  return 0;
}

int test_reuse(const std::string& dir_arg, const std::string& model) {
  // A new engine process: nothing in memory, only the fs store the first process wrote.
  const fs::path dir = dir_arg;
  Session s(model, session_params(kCtx, kUbatch));
  PrefixCache cache(s.ctx(), cache_config(s, dir, true, false));
  const std::vector<llama_token> p = prompt(s, 6 * kBlock, 1, 10);  // same 6 blocks, other tail
  std::size_t restored = 0;
  const std::vector<float> got = cached_logits(s, cache, p, &restored);
  EXPECT(restored == 6 * kBlock);
  EXPECT(cache.stats().fs_hits == 6);
  EXPECT(same_logits(recompute_logits(s, p), got));
  return 0;
}

int test_corrupt(const std::string& dir_arg, const std::string& model) {
  const fs::path dir = fresh_dir(dir_arg);
  Session s(model, session_params(kCtx, kUbatch));
  const std::vector<llama_token> p = prompt(s, 4 * kBlock, 0, 10);
  const std::vector<float> want = recompute_logits(s, p);
  {
    PrefixCache cache(s.ctx(), cache_config(s, dir, true, true));
    EXPECT(cache.save(s.ctx(), kMainSeq, p) == 4);
  }
  // One fs block file damaged.
  bool damaged = false;
  for (const auto& e : fs::recursive_directory_iterator(dir / "fs")) {
    if (e.is_regular_file() && corrupt_first_block_in(e.path())) {
      damaged = true;
      break;
    }
  }
  EXPECT(damaged);
  {
    PrefixCache cache(s.ctx(), cache_config(s, dir, true, false));
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    EXPECT(restored < 4 * kBlock);
    EXPECT(cache.stats().rejected == 1);
    EXPECT(same_logits(want, got));
    // The recomputed block is stored again; the next restore has all 4.
    EXPECT(cache.save(s.ctx(), kMainSeq, p) == 1);
    EXPECT(same_logits(want, cached_logits(s, cache, p, &restored)));
    EXPECT(restored == 4 * kBlock);
  }
  // The slot file damaged (the first block entry in it), fs store out of the way.
  EXPECT(corrupt_first_block_in(dir / "slots.kvr"));
  {
    PrefixCache cache(s.ctx(), cache_config(s, dir, false, true));
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    EXPECT(restored < 4 * kBlock);
    EXPECT(cache.stats().rejected == 1);
    EXPECT(same_logits(want, got));
  }
  return 0;
}

int test_mismatch(const std::string& dir_arg, const std::string& model, const std::string& other) {
  const fs::path dir = fresh_dir(dir_arg);
  // One model id for both files, so only the engine fingerprint (the GGUF digest, the KV
  // types) and the tenant salt can tell the namespaces apart.
  auto config = [&](const Session& s) {
    CacheConfig c = cache_config(s, dir, true, true);
    c.model_id = "tiny-llama";
    return c;
  };
  std::vector<llama_token> p;
  std::string stored_ns;
  {
    Session s(model, session_params(kCtx, kUbatch));
    PrefixCache cache(s.ctx(), config(s));
    p = prompt(s, 4 * kBlock, 0, 10);
    s.clear();
    s.decode_from(p, 0);
    EXPECT(cache.save(s.ctx(), kMainSeq, p) == 4);
    stored_ns = cache.namespace_name();
    // kvr's canonical name: readable prefix (model id, KV dtype, parallel position) + digest,
    // with the fields recorded beside the blocks.
    EXPECT(stored_ns.rfind("tiny-llama.f16.tp0of1.pp0.cp0.", 0) == 0);
    EXPECT(fs::exists(dir / "fs" / stored_ns / "NAMESPACE.json"));
    EXPECT(cache.engine_fingerprint().find("gguf sha256 " + file_digest_hex(model)) != std::string::npos);
  }
  // Another model file of the same shape: another namespace, no hit (the slot file, created
  // for the first namespace, is replaced: a slot file holds one namespace).
  {
    Session s(other, session_params(kCtx, kUbatch));
    PrefixCache cache(s.ctx(), config(s));
    EXPECT(cache.namespace_name() != stored_ns);
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    EXPECT(restored == 0);
    EXPECT(same_logits(recompute_logits(s, p), got));
  }
  // The same model with an F32 K cache: another namespace, no hit.
  {
    Session s(model, session_params(kCtx, kUbatch, GGML_TYPE_F32));
    PrefixCache cache(s.ctx(), config(s));
    EXPECT(cache.namespace_name() != stored_ns);
    EXPECT(cache.namespace_name().rfind("tiny-llama.kf32-vf16.", 0) == 0);
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    EXPECT(restored == 0);
    EXPECT(same_logits(recompute_logits(s, p), got));
  }
  // The same model and types for another tenant: another namespace, no hit.
  {
    Session s(model, session_params(kCtx, kUbatch));
    CacheConfig c = config(s);
    c.tenant_salt = "tenant-b";
    PrefixCache cache(s.ctx(), c);
    EXPECT(cache.namespace_name() != stored_ns);
    std::size_t restored = 0;
    cached_logits(s, cache, p, &restored);
    EXPECT(restored == 0);
  }
  // Same model, types and tenant again: still hits (the misses above were the namespace's
  // doing), from the fs store.
  {
    Session s(model, session_params(kCtx, kUbatch));
    PrefixCache cache(s.ctx(), config(s));
    EXPECT(cache.namespace_name() == stored_ns);
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    EXPECT(restored == 4 * kBlock);
    EXPECT(same_logits(recompute_logits(s, p), got));
  }
  return 0;
}

constexpr int kSaverPrompts = 40;

// The child of kill-saver: prefills and saves prompt after prompt until it is killed.
int run_saver(const std::string& dir_arg, const std::string& model, int first_prompt) {
  Session s(model, session_params(kCtx, kUbatch));
  PrefixCache cache(s.ctx(), cache_config(s, dir_arg, true, true));
  for (int r = first_prompt; r < first_prompt + kSaverPrompts; ++r) {
    const std::vector<llama_token> p = prompt(s, 2 * kBlock, static_cast<std::uint64_t>(r), 12 * kBlock);
    s.clear();
    s.decode_from(p, 0);
    cache.save(s.ctx(), kMainSeq, p);
    std::printf("saved %d\n", r);  // the parent kills only after a first save
    std::fflush(stdout);
  }
  return 0;
}

int test_kill_saver(const std::string& dir_arg, const std::string& model, const std::string& self) {
  const fs::path dir = fresh_dir(dir_arg);
  constexpr int kKills = 12;
  std::mt19937 rng(12345);
  for (int round = 0; round < kKills; ++round) {
    int report[2];
    EXPECT(pipe(report) == 0);
    const pid_t pid = fork();
    if (pid == 0) {
      dup2(report[1], STDOUT_FILENO);
      close(report[0]);
      const std::string first = std::to_string((round % 4) * 5);
      execl(self.c_str(), self.c_str(), "saver", dir.c_str(), model.c_str(), first.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    close(report[1]);
    // Wait for the saver's first stored prompt (however slow the machine is), then kill it
    // a random moment later: inside a later prompt's prefill or save.
    pollfd pfd{report[0], POLLIN, 0};
    char line[64];
    if (poll(&pfd, 1, 120000) == 1) EXPECT(read(report[0], line, sizeof line) > 0);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    kill(pid, SIGKILL);
    close(report[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0));
  }
  Session s(model, session_params(kCtx, kUbatch));
  PrefixCache cache(s.ctx(), cache_config(s, dir, true, true));
  std::size_t hits = 0;
  for (int r = 0; r < 20 + kSaverPrompts; ++r) {
    const std::vector<llama_token> p = prompt(s, 2 * kBlock, static_cast<std::uint64_t>(r), 12 * kBlock);
    std::size_t restored = 0;
    const std::vector<float> got = cached_logits(s, cache, p, &restored);
    hits += restored / kBlock;
    EXPECT(same_logits(recompute_logits(s, p), got));
  }
  std::printf("kill-saver: %d kills, %zu blocks hit afterwards, %llu rejected\n", kKills, hits,
              static_cast<unsigned long long>(cache.stats().rejected));
  EXPECT(hits > 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s exact|store|reuse|corrupt|mismatch|kill-saver DIR MODEL [OTHER]\n", argv[0]);
    return 2;
  }
  quiet_llama_logs();
  llama_backend_init();
  const std::string cmd = argv[1];
  const std::string dir = argv[2];
  const std::string model = argv[3];
  int rc = 0;
  try {
    if (cmd == "exact") {
      rc = test_exact(dir, model);
    } else if (cmd == "store") {
      rc = test_store(dir, model);
    } else if (cmd == "reuse") {
      rc = test_reuse(dir, model);
    } else if (cmd == "corrupt") {
      rc = test_corrupt(dir, model);
    } else if (cmd == "mismatch" && argc >= 5) {
      rc = test_mismatch(dir, model, argv[4]);
    } else if (cmd == "kill-saver") {
      rc = test_kill_saver(dir, model, fs::canonical("/proc/self/exe").string());
    } else if (cmd == "saver" && argc >= 5) {
      rc = run_saver(dir, model, std::atoi(argv[4]));
    } else {
      std::fprintf(stderr, "unknown scenario %s\n", cmd.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  llama_backend_free();
  if (g_failures > 0 || rc != 0) {
    std::fprintf(stderr, "%s: %d expectation(s) failed\n", cmd.c_str(), g_failures);
    return 1;
  }
  std::printf("%s: ok\n", cmd.c_str());
  return 0;
}
