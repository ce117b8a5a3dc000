// kvr-llama-bench: time to first token (TTFT) on prompts that share a prefix, on the
// benchmark model. Workload: 8 requests sharing a 2,048-token system prompt with distinct
// 64-token questions, then a 4-turn conversation whose turns extend the previous prompt
// (64 answer tokens + 64 user tokens per turn). Per request it reports TTFT for:
//   cold       full recompute of the prompt
//   slot       kvr restore from the slot file (this process), decode of the rest
//   fs-fresh   kvr restore from the fs store in a fresh process, block files dropped from the
//              page cache with posix_fadvise(DONTNEED) first (residency checked with mincore)
//   statefile  llama.cpp's own llama_state_seq_load_file of the previous prompt's prefix
//              (the system prompt for the requests and turn 1, the previous turn after that),
//              the file dropped from the page cache first (as cold as kvr's O_DIRECT tiers)
// and the restore GB/s (block bytes / time to load them from the tier, and including putting
// them into the context). Beside each TTFT, in parentheses, the part of it spent restoring
// the prefix (kvr: lookups, loads and llama_state_seq_set_data; state file:
// llama_state_seq_load_file), the rest being the decode of the uncached tokens.
//
// Usage: kvr-llama-bench --model M.gguf --dir D [--block 256] [--restore-window N] [--markdown OUT.md]
// (--restore-window: blocks a restore loads ahead of the one it applies; CacheConfig's default)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "kvr_llama/prefix_cache.hpp"
#include "llama_session.hpp"

namespace fs = std::filesystem;
using namespace kvr_llama;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kSystemTokens = 2048;
constexpr std::size_t kQuestionTokens = 64;
constexpr std::size_t kRequests = 8;
constexpr std::size_t kTurns = 4;
constexpr std::uint32_t kCtx = 4096;

struct Options {
  std::string model;
  std::string dir;
  std::uint32_t block = 256;
  std::size_t restore_window = CacheConfig{}.restore_window;
  std::string markdown;
  bool fresh_phase = false;  // internal: the fs-fresh child
};

struct Request {
  std::string name;
  std::vector<llama_token> tokens;
  std::size_t statefile_prefix;  // index of the request whose state file serves as prefix (or -1 = system)
};

// One timed restore + decode.
struct Timing {
  double ttft_ms = 0;
  double restore_ms = 0;  // of ttft_ms: finding, loading and applying the cached blocks
  std::size_t cached_tokens = 0;
  double load_gbps = 0;   // block bytes / load time
  double apply_gbps = 0;  // block bytes / (load + apply) time
};

std::vector<Request> workload(int32_t n_vocab) {
  const std::vector<llama_token> system = random_tokens(kSystemTokens, 1, n_vocab);
  std::vector<Request> reqs;
  for (std::size_t r = 0; r < kRequests; ++r) {
    std::vector<llama_token> t = system;
    const auto q = random_tokens(kQuestionTokens, 100 + r, n_vocab);
    t.insert(t.end(), q.begin(), q.end());
    reqs.push_back({"request " + std::to_string(r + 1), t, static_cast<std::size_t>(-1)});
  }
  std::vector<llama_token> conv = system;
  for (std::size_t turn = 0; turn < kTurns; ++turn) {
    if (turn > 0) {
      const auto answer = random_tokens(kQuestionTokens, 300 + turn, n_vocab);
      conv.insert(conv.end(), answer.begin(), answer.end());
    }
    const auto user = random_tokens(kQuestionTokens, 200 + turn, n_vocab);
    conv.insert(conv.end(), user.begin(), user.end());
    const std::size_t prev = turn == 0 ? static_cast<std::size_t>(-1) : reqs.size() - 1;
    reqs.push_back({"turn " + std::to_string(turn + 1), conv, prev});
  }
  return reqs;
}

double ms_since(Clock::time_point t0) { return seconds_since(t0) * 1e3; }

Timing timed_restore(Session& s, PrefixCache& cache, const std::vector<llama_token>& tokens) {
  const CacheStats before = cache.stats();
  s.clear();
  const auto t0 = Clock::now();
  Timing t;
  t.cached_tokens = cache.restore(s.ctx(), kMainSeq, tokens);
  s.decode_from(tokens, t.cached_tokens);
  t.ttft_ms = ms_since(t0);
  const CacheStats& after = cache.stats();
  const double bytes = double(after.bytes_restored - before.bytes_restored);
  const double load_ns = double(after.restore_load_ns - before.restore_load_ns);
  const double apply_ns = double(after.restore_apply_ns - before.restore_apply_ns);
  t.restore_ms = (load_ns + apply_ns) / 1e6;
  if (load_ns > 0) t.load_gbps = bytes / load_ns;
  if (load_ns + apply_ns > 0) t.apply_gbps = bytes / (load_ns + apply_ns);
  return t;
}

CacheConfig cache_config(const Session& s, const Options& o, bool with_slot) {
  CacheConfig c;
  c.model_path = o.model;
  c.context_params = s.params();
  c.block_tokens = o.block;
  c.restore_window = o.restore_window;
  c.scratch_seq = kScratchSeq;
  c.fs_root = (fs::path(o.dir) / "fs").string();
  if (with_slot) c.slot_file = (fs::path(o.dir) / "slots.kvr").string();
  c.slot_count = 64;
  return c;
}

// Drops one file from the page cache; adds its pages and those still resident afterwards
// (mincore) to the counts, so the report can say how cold the reads were.
void drop_file(const fs::path& path, std::size_t* resident, std::size_t* pages) {
  const long page = sysconf(_SC_PAGESIZE);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    void* m = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    if (m != MAP_FAILED) {
      const std::size_t n = (static_cast<std::size_t>(st.st_size) + page - 1) / page;
      std::vector<unsigned char> vec(n);
      if (::mincore(m, static_cast<std::size_t>(st.st_size), vec.data()) == 0) {
        for (unsigned char v : vec) *resident += v & 1;
        *pages += n;
      }
      ::munmap(m, static_cast<std::size_t>(st.st_size));
    }
  }
  ::close(fd);
}

// Drops the fs store's block files from the page cache; returns the fraction of their pages
// still resident afterwards.
double drop_block_files(const fs::path& root, std::size_t* files) {
  std::size_t resident = 0;
  std::size_t pages = 0;
  *files = 0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file()) continue;
    drop_file(e.path(), &resident, &pages);
    ++*files;
  }
  return pages == 0 ? 0.0 : double(resident) / double(pages);
}

// The fs-fresh child: a new engine process with an empty slot tier, reading the fs store.
int run_fresh(const Options& o) {
  Session s(o.model, session_params(kCtx, o.block));
  PrefixCache cache(s.ctx(), cache_config(s, o, false));
  const std::vector<Request> reqs = workload(s.n_vocab());
  std::size_t files = 0;
  const double resident = drop_block_files(fs::path(o.dir) / "fs", &files);
  std::ofstream out(fs::path(o.dir) / "fresh.tsv");
  out << "# dropped " << files << " files, resident after drop " << resident * 100 << "%\n";
  for (const Request& r : reqs) {
    // Each request's own blocks cold: drop again, so request 2 does not ride on request 1's reads.
    std::size_t unused = 0;
    drop_block_files(fs::path(o.dir) / "fs", &unused);
    const Timing t = timed_restore(s, cache, r.tokens);
    out << t.ttft_ms << '\t' << t.cached_tokens << '\t' << t.load_gbps << '\t' << t.apply_gbps << '\t'
        << t.restore_ms << '\n';
  }
  out << "# fs hits " << cache.stats().fs_hits << " slot hits " << cache.stats().slot_hits << '\n';
  return 0;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

int run_main(const Options& o, const std::string& self) {
  fs::remove_all(o.dir);
  fs::create_directories(o.dir);
  Session s(o.model, session_params(kCtx, o.block));
  const std::vector<Request> reqs = workload(s.n_vocab());
  const std::size_t n = reqs.size();
  std::vector<double> cold(n), statefile(n), statefile_load(n);
  std::vector<Timing> slot(n), fresh(n);
  std::vector<std::string> state_paths(n);
  const std::string system_state = (fs::path(o.dir) / "system.state").string();

  {
    PrefixCache cache(s.ctx(), cache_config(s, o, true));
    std::fprintf(stderr, "namespace %s\nengine fingerprint: %s\n%zu bytes per %u-token block (%zu of llama.cpp state)\n",
                 cache.namespace_name().c_str(), cache.engine_fingerprint().c_str(), cache.block_bytes(), o.block,
                 cache.block_state_bytes());
    // Cold pass; after each prefill (untimed) the blocks are saved and the state files written.
    for (std::size_t i = 0; i < n; ++i) {
      s.clear();
      const auto t0 = Clock::now();
      s.decode_from(reqs[i].tokens, 0);
      cold[i] = ms_since(t0);
      cache.save(s.ctx(), kMainSeq, reqs[i].tokens);
      if (i == 0) {
        // The system prompt's own state file: positions [0, 2048) copied out alone.
        llama_memory_t mem = llama_get_memory(s.ctx());
        llama_memory_seq_cp(mem, kMainSeq, kScratchSeq, 0, kSystemTokens);
        llama_state_seq_save_file(s.ctx(), system_state.c_str(), kScratchSeq, reqs[i].tokens.data(),
                                  kSystemTokens);
        llama_memory_seq_rm(mem, kScratchSeq, -1, -1);
      }
      state_paths[i] = (fs::path(o.dir) / ("req" + std::to_string(i) + ".state")).string();
      llama_state_seq_save_file(s.ctx(), state_paths[i].c_str(), kMainSeq, reqs[i].tokens.data(),
                                reqs[i].tokens.size());
      std::fprintf(stderr, "cold %-10s %5zu tokens %8.1f ms\n", reqs[i].name.c_str(), reqs[i].tokens.size(),
                   cold[i]);
    }
    // kvr from the slot file (the slot tier is asked first, and holds every block).
    for (std::size_t i = 0; i < n; ++i) slot[i] = timed_restore(s, cache, reqs[i].tokens);
    std::fprintf(stderr, "slot pass: %llu slot hits, %llu fs hits\n",
                 static_cast<unsigned long long>(cache.stats().slot_hits),
                 static_cast<unsigned long long>(cache.stats().fs_hits));
  }
  // llama.cpp's own state file of the prefix.
  std::vector<llama_token> scratch_tokens(kCtx);
  std::size_t sf_resident = 0;
  std::size_t sf_pages = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string& path = reqs[i].statefile_prefix == static_cast<std::size_t>(-1)
                                  ? system_state
                                  : state_paths[reqs[i].statefile_prefix];
    // Cold, like kvr's tiers (O_DIRECT; the fs-fresh block files are dropped too).
    drop_file(path, &sf_resident, &sf_pages);
    s.clear();
    const auto t0 = Clock::now();
    std::size_t got = 0;
    if (llama_state_seq_load_file(s.ctx(), path.c_str(), kMainSeq, scratch_tokens.data(), scratch_tokens.size(),
                                  &got) == 0) {
      std::fprintf(stderr, "llama_state_seq_load_file(%s) failed\n", path.c_str());
      return 1;
    }
    statefile_load[i] = ms_since(t0);
    s.decode_from(reqs[i].tokens, got);
    statefile[i] = ms_since(t0);
  }

  // The fresh process.
  const pid_t pid = fork();
  if (pid == 0) {
    execl(self.c_str(), self.c_str(), "--fresh", "--model", o.model.c_str(), "--dir", o.dir.c_str(), "--block",
          std::to_string(o.block).c_str(), "--restore-window", std::to_string(o.restore_window).c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "fresh process failed\n");
    return 1;
  }
  std::ifstream in(fs::path(o.dir) / "fresh.tsv");
  std::string line, fresh_note, fresh_hits;
  std::size_t k = 0;
  while (std::getline(in, line)) {
    if (line.rfind("# dropped", 0) == 0) {
      fresh_note = line.substr(2);
    } else if (line.rfind("# fs hits", 0) == 0) {
      fresh_hits = line.substr(2);
    } else if (k < n) {
      std::istringstream f(line);
      f >> fresh[k].ttft_ms >> fresh[k].cached_tokens >> fresh[k].load_gbps >> fresh[k].apply_gbps >>
          fresh[k].restore_ms;
      ++k;
    }
  }

  std::ostringstream md;
  md << "| request | prompt tokens | kvr cached | cold ms | kvr slot ms (restore) | kvr fs fresh ms (restore) "
        "| state file ms (load) | slot speedup | fs speedup | slot load / +apply GB/s | fs fresh load / +apply GB/s |\n";
  md << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (std::size_t i = 0; i < n; ++i) {
    md << "| " << reqs[i].name << " | " << reqs[i].tokens.size() << " | " << slot[i].cached_tokens << " | "
       << fmt("%.0f", cold[i]) << " | " << fmt("%.1f", slot[i].ttft_ms) << fmt(" (%.1f)", slot[i].restore_ms)
       << " | " << fmt("%.1f", fresh[i].ttft_ms) << fmt(" (%.1f)", fresh[i].restore_ms) << " | "
       << fmt("%.1f", statefile[i]) << fmt(" (%.1f)", statefile_load[i]) << " | "
       << fmt("%.1fx", cold[i] / slot[i].ttft_ms) << " | "
       << fmt("%.1fx", cold[i] / fresh[i].ttft_ms) << " | " << fmt("%.2f", slot[i].load_gbps) << " / "
       << fmt("%.2f", slot[i].apply_gbps) << " | " << fmt("%.2f", fresh[i].load_gbps) << " / "
       << fmt("%.2f", fresh[i].apply_gbps) << " |\n";
  }
  double cold_sum = 0, slot_sum = 0, fresh_sum = 0, sf_sum = 0;
  double slot_restore = 0, fresh_restore = 0, sf_load = 0;
  for (std::size_t i = 0; i < kRequests; ++i) {
    cold_sum += cold[i];
    slot_sum += slot[i].ttft_ms;
    fresh_sum += fresh[i].ttft_ms;
    sf_sum += statefile[i];
    slot_restore += slot[i].restore_ms;
    fresh_restore += fresh[i].restore_ms;
    sf_load += statefile_load[i];
  }
  md << "\nMean over the 8 requests sharing the 2,048-token system prompt: cold " << fmt("%.0f", cold_sum / 8)
     << " ms, kvr slot " << fmt("%.1f", slot_sum / 8) << " ms (" << fmt("%.1fx", cold_sum / slot_sum)
     << "), kvr fs fresh " << fmt("%.1f", fresh_sum / 8) << " ms (" << fmt("%.1fx", cold_sum / fresh_sum)
     << "), llama.cpp state file " << fmt("%.1f", sf_sum / 8) << " ms.\n";
  md << "Of that, restoring the 2,048-token prefix: kvr slot " << fmt("%.1f", slot_restore / 8) << " ms, kvr fs fresh "
     << fmt("%.1f", fresh_restore / 8) << " ms, llama.cpp state file load " << fmt("%.1f", sf_load / 8) << " ms.\n";
  md << "Fresh process: " << fresh_note << "; " << fresh_hits << ".\n";
  md << "State files dropped from the page cache before each load: resident after drop "
     << fmt("%.0f", sf_pages == 0 ? 0.0 : 100.0 * double(sf_resident) / double(sf_pages)) << "%.\n";
  std::printf("%s", md.str().c_str());
  if (!o.markdown.empty()) std::ofstream(o.markdown) << md.str();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--model") {
      o.model = value();
    } else if (a == "--dir") {
      o.dir = value();
    } else if (a == "--block") {
      o.block = static_cast<std::uint32_t>(std::stoul(value()));
    } else if (a == "--restore-window") {
      o.restore_window = static_cast<std::size_t>(std::stoul(value()));
    } else if (a == "--markdown") {
      o.markdown = value();
    } else if (a == "--fresh") {
      o.fresh_phase = true;
    } else {
      std::fprintf(stderr, "usage: %s --model M.gguf --dir D [--block 256] [--restore-window 4] [--markdown OUT.md]\n", argv[0]);
      return 2;
    }
  }
  if (o.model.empty() || o.dir.empty()) {
    std::fprintf(stderr, "--model and --dir are required\n");
    return 2;
  }
  quiet_llama_logs();
  llama_backend_init();
  int rc = 1;
  try {
    rc = o.fresh_phase ? run_fresh(o) : run_main(o, fs::canonical("/proc/self/exe").string());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvr-llama-bench: %s\n", e.what());
  }
  llama_backend_free();
  return rc;
}
