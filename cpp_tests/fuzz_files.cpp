// A bounded, deterministic mutation fuzzer over the files kvr reads back: fs block files,
// slot files, tensor files and region export files, each written by kvr itself through the
// C API, then damaged and handed back to the C API.
//
// What must hold for every mutation (the test fails otherwise):
// - no crash (the sanitizer build turns memory errors into failures) and no hang (an alarm
//   kills a case that takes longer than KVR_FUZZ_CASE_TIMEOUT_S seconds);
// - no wrong byte served: a load that returns KVR_OK returns exactly the bytes that were
//   stored (fs blocks, slot entries, region rows); tensor reads stay inside the file and agree
//   with the zero-copy view;
// - a failed import copies nothing;
// - damage is reported as an error status, never as KVR_ERR_INTERNAL (a panic or a bug): which
//   error depends on what the damage hit (a renamed tensor is NOT_FOUND, a bad checksum CORRUPT).
//
// Usage: kvr_fuzz_files [iterations per file kind (default 1000)] [seed]
#include <kvr.h>

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

constexpr unsigned kCaseTimeoutS = 20;
int g_failures = 0;

#define FUZZ_CHECK(cond, ...)                                      \
  do {                                                             \
    if (!(cond)) {                                                 \
      ++g_failures;                                                \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                           \
      std::fprintf(stderr, " (%s)\n", kvr_last_error_message());   \
    }                                                              \
  } while (0)

// Setup steps that must succeed for the fuzzer to mean anything.
void must(kvr_status s, const char* what) {
  if (s != KVR_OK) {
    std::fprintf(stderr, "setup failed: %s: %s: %s\n", what, kvr_status_str(s),
                 kvr_last_error_message());
    std::exit(2);
  }
}

struct Rng {  // splitmix64: deterministic for a seed, on every platform
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
};

std::vector<uint8_t> read_file(const std::string& path) {
  std::vector<uint8_t> out;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return out;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.insert(out.end(), buf, buf + n);
  std::fclose(f);
  return out;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  // A fresh inode each time (write + rename), as a damaged file arriving from elsewhere.
  std::string tmp = path + ".fuzz";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f || (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size())) {
    std::fprintf(stderr, "setup failed: writing %s\n", tmp.c_str());
    std::exit(2);
  }
  std::fclose(f);
  must(std::rename(tmp.c_str(), path.c_str()) == 0 ? KVR_OK : KVR_ERR_IO, "rename");
}

// Where a safetensors file's data section starts (8 + the header length), or 0.
size_t safetensors_data_start(const std::vector<uint8_t>& f) {
  if (f.size() < 8) return 0;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | f[i];
  return n < f.size() ? static_cast<size_t>(8 + n) : 0;
}

// One random damage, biased towards the first `hot` bytes (headers and tables) and, for
// safetensors files, the first and last bytes of the data section (ids, small tensors).
std::vector<uint8_t> mutate(const std::vector<uint8_t>& orig, size_t hot, Rng& rng) {
  std::vector<uint8_t> m = orig;
  const size_t n = m.size();
  const size_t data = safetensors_data_start(orig);
  auto pos = [&]() -> size_t {
    if (n == 0) return 0;
    const uint64_t r = rng.below(8);
    if (data && data < n && r < 2) {  // first or last bytes of the data section
      const size_t span = n - data < 96 ? n - data : 96;
      return r == 0 ? data + rng.below(span) : n - 1 - rng.below(span);
    }
    if (hot && r < 6) return rng.below(hot < n ? hot : n);
    return rng.below(n);
  };
  const int rounds = 1 + static_cast<int>(rng.below(3));
  for (int r = 0; r < rounds && !m.empty(); ++r) {
    switch (rng.below(8)) {
      case 7: {  // a little-endian u64 near the data section's start nudged by one (ids)
        if (data + 8 > m.size()) break;
        size_t words = (m.size() - data) / 8;
        size_t p = data + 8 * rng.below(words < 12 ? words : 12);
        uint64_t v = 0;
        for (int b = 7; b >= 0; --b) v = (v << 8) | m[p + b];
        v += rng.below(2) ? 1 : ~0ull;
        for (int b = 0; b < 8; ++b) m[p + b] = static_cast<uint8_t>(v >> (8 * b));
        break;
      }
      case 0:  // flip one bit
      case 1: {
        size_t p = pos();
        m[p] ^= static_cast<uint8_t>(1u << rng.below(8));
        break;
      }
      case 2: {  // one random byte
        m[pos()] = static_cast<uint8_t>(rng.next());
        break;
      }
      case 3: {  // a run of random bytes
        size_t p = pos(), len = 1 + rng.below(64);
        for (size_t i = p; i < p + len && i < m.size(); ++i) m[i] = static_cast<uint8_t>(rng.next());
        break;
      }
      case 4: {  // a digit changed into another digit (keeps JSON well-formed)
        std::vector<size_t> digits;
        size_t lim = hot && hot < m.size() ? hot : m.size();
        for (size_t i = 0; i < lim; ++i)
          if (m[i] >= '0' && m[i] <= '9') digits.push_back(i);
        if (!digits.empty()) m[digits[rng.below(digits.size())]] = '0' + rng.below(10);
        break;
      }
      case 5:  // truncated
        m.resize(rng.below(m.size()));
        break;
      default: {  // extended with junk
        size_t extra = 1 + rng.below(8192);
        for (size_t i = 0; i < extra; ++i) m.push_back(static_cast<uint8_t>(rng.next()));
        break;
      }
    }
  }
  return m;
}

std::vector<uint8_t> pattern(uint64_t seed, size_t len) {
  Rng r{seed};
  std::vector<uint8_t> v(len);
  for (auto& b : v) b = static_cast<uint8_t>(r.next());
  return v;
}

kvr_block_key key_of(uint64_t i) {
  kvr_block_key k{};
  Rng r{i * 7919 + 1};
  for (auto& b : k.bytes) b = static_cast<uint8_t>(r.next());
  return k;
}

bool reported(kvr_status s) { return s != KVR_OK && s != KVR_ERR_INTERNAL; }

void arm() { alarm(kCaseTimeoutS); }  // SIGALRM's default action ends a hung run

// ---- fs block files ----
void fuzz_fs(const std::string& dir, int iters, Rng& rng) {
  kvr_fs_config cfg;
  must(kvr_fs_config_default(&cfg), "fs defaults");
  std::string root = dir + "/fs";
  cfg.root = root.c_str();
  cfg.namespace_name = "fuzz";
  cfg.read_threads = 1;
  cfg.write_threads = 1;
  kvr_fs* fs = nullptr;
  must(kvr_fs_open(&cfg, &fs), "fs open");
  const kvr_block_key key = key_of(1);
  const auto payload = pattern(11, 8192 + 123);
  must(kvr_store_block(fs, &key, payload.data(), payload.size()), "store");
  char path[4096];
  size_t needed = 0;
  must(kvr_fs_block_path(fs, &key, path, sizeof path, &needed), "block path");
  const auto orig = read_file(path);
  std::vector<uint8_t> dst(payload.size());
  int detected = 0, harmless = 0;
  for (int i = 0; i < iters; ++i) {
    arm();
    write_file(path, mutate(orig, 4096, rng));
    if (i % 50 == 49) {  // now and then a fresh open scans the damaged store
      kvr_fs_close(fs);
      fs = nullptr;
      kvr_status s = kvr_fs_open(&cfg, &fs);
      FUZZ_CHECK(s == KVR_OK, "fs open over a damaged block: %s", kvr_status_str(s));
      if (s != KVR_OK) return;
    }
    std::memset(dst.data(), 0, dst.size());
    kvr_status s = kvr_load_block(fs, &key, dst.data(), dst.size());
    if (s == KVR_OK) {
      FUZZ_CHECK(dst == payload, "fs iteration %d served wrong bytes", i);
      ++harmless;
    } else {
      FUZZ_CHECK(reported(s),
                 "fs iteration %d: unexpected status %s", i, kvr_status_str(s));
      ++detected;
    }
  }
  // The store still works after all of it.
  write_file(path, orig);
  kvr_status s = kvr_load_block(fs, &key, dst.data(), dst.size());
  FUZZ_CHECK(s == KVR_OK && dst == payload, "fs: intact block after fuzzing: %s", kvr_status_str(s));
  kvr_fs_close(fs);
  std::printf("fs block files: %d mutations, %d detected, %d harmless\n", iters, detected, harmless);
}

// ---- slot files ----
void fuzz_disk(const std::string& dir, int iters, Rng& rng) {
  std::string path = dir + "/slots.kvd";
  kvr_disk_config cfg;
  must(kvr_disk_config_default(&cfg), "disk defaults");
  cfg.path = path.c_str();
  cfg.slot_size = 8192;
  cfg.num_slots = 6;
  cfg.io_threads = 1;
  constexpr int kEntries = 4;
  std::vector<std::vector<uint8_t>> data, meta;
  {
    kvr_disk* d = nullptr;
    must(kvr_disk_open(&cfg, &d), "disk open");
    for (int e = 0; e < kEntries; ++e) {
      data.push_back(pattern(100 + e, 1000 + 1700 * e));
      meta.push_back(pattern(200 + e, 3 + 40 * e));
      kvr_block_key k = key_of(10 + e);
      must(kvr_disk_write(d, &k, data[e].data(), data[e].size(), meta[e].data(), meta[e].size()),
           "disk write");
    }
    kvr_disk_close(d);
  }
  const auto orig = read_file(path);
  std::vector<uint8_t> out(cfg.slot_size), mout(KVR_DISK_MAX_META);
  int opened = 0, refused = 0, served = 0, dropped = 0;
  for (int i = 0; i < iters; ++i) {
    arm();
    write_file(path, mutate(orig, 16384, rng));
    kvr_disk* d = nullptr;
    kvr_status s = kvr_disk_open(&cfg, &d);
    if (s != KVR_OK) {
      FUZZ_CHECK(reported(s),
                 "disk iteration %d: open gave %s", i, kvr_status_str(s));
      ++refused;
      continue;
    }
    ++opened;
    for (int e = 0; e < kEntries; ++e) {
      kvr_block_key k = key_of(10 + e);
      uint64_t len = 0, mlen = 0;
      s = kvr_disk_read(d, &k, out.data(), out.size(), &len, mout.data(), mout.size(), &mlen);
      if (s == KVR_OK) {
        FUZZ_CHECK(len == data[e].size() && std::memcmp(out.data(), data[e].data(), len) == 0,
                   "disk iteration %d entry %d: wrong payload", i, e);
        FUZZ_CHECK(mlen == meta[e].size() && std::memcmp(mout.data(), meta[e].data(), mlen) == 0,
                   "disk iteration %d entry %d: wrong metadata", i, e);
        ++served;
      } else {
        FUZZ_CHECK(reported(s),
                   "disk iteration %d entry %d: read gave %s", i, e, kvr_status_str(s));
        ++dropped;
      }
    }
    // A file that opened is fully usable: a new entry goes in and comes back.
    kvr_block_key fresh = key_of(99);
    const auto p = pattern(999 + i, 777);
    s = kvr_disk_write(d, &fresh, p.data(), p.size(), nullptr, 0);
    FUZZ_CHECK(s == KVR_OK, "disk iteration %d: write after open gave %s", i, kvr_status_str(s));
    uint64_t len = 0, mlen = 0;
    s = kvr_disk_read(d, &fresh, out.data(), out.size(), &len, mout.data(), mout.size(), &mlen);
    FUZZ_CHECK(s == KVR_OK && len == p.size() && std::memcmp(out.data(), p.data(), len) == 0,
               "disk iteration %d: fresh entry did not round-trip: %s", i, kvr_status_str(s));
    kvr_disk_close(d);
  }
  std::printf("slot files: %d mutations, %d refused at open, %d opened (%d entries served, %d dropped)\n",
              iters, refused, opened, served, dropped);
}

// ---- tensor files ----
uint64_t dtype_size(uint32_t dt) {
  switch (dt) {
    case KVR_DTYPE_BOOL: case KVR_DTYPE_U8: case KVR_DTYPE_I8: case KVR_DTYPE_F8_E4M3:
    case KVR_DTYPE_F8_E5M2: case KVR_DTYPE_F8_E8M0: case KVR_DTYPE_F8_E4M3FNUZ:
    case KVR_DTYPE_F8_E5M2FNUZ: return 1;
    case KVR_DTYPE_U16: case KVR_DTYPE_I16: case KVR_DTYPE_F16: case KVR_DTYPE_BF16: return 2;
    case KVR_DTYPE_U32: case KVR_DTYPE_I32: case KVR_DTYPE_F32: return 4;
    case KVR_DTYPE_U64: case KVR_DTYPE_I64: case KVR_DTYPE_F64: case KVR_DTYPE_C64: return 8;
    default: return 0;  // sub-byte or unknown: size not checked here
  }
}

void fuzz_tensors(const std::string& dir, int iters, Rng& rng) {
  std::string path = dir + "/t.safetensors";
  const auto a = pattern(1, 4 * 5 * 4), b = pattern(2, 100), c = pattern(3, 3 * 2);
  const uint64_t sa[] = {4, 5}, sb[] = {100}, sc[] = {3};
  const kvr_tensor ts[] = {{"a", KVR_DTYPE_F32, 2, sa, nullptr, a.data()},
                           {"b", KVR_DTYPE_U8, 1, sb, nullptr, b.data()},
                           {"c", KVR_DTYPE_BF16, 1, sc, nullptr, c.data()}};
  const kvr_kv md[] = {{"model", "fuzz"}, {"step", "7"}};
  must(kvr_tensors_write(path.c_str(), ts, 3, md, 2, KVR_TENSORS_NO_SYNC), "tensors write");
  const auto orig = read_file(path);
  int opened = 0, refused = 0;
  std::vector<uint8_t> buf, buf2;
  for (int i = 0; i < iters; ++i) {
    arm();
    const auto bytes = mutate(orig, orig.size() > 400 ? 400 : orig.size(), rng);
    write_file(path, bytes);
    kvr_tensor_file* f = nullptr;
    kvr_status s = kvr_tensors_open(path.c_str(), &f);
    if (s != KVR_OK) {
      FUZZ_CHECK(reported(s),
                 "tensors iteration %d: open gave %s", i, kvr_status_str(s));
      ++refused;
      continue;
    }
    ++opened;
    size_t n = 0;
    FUZZ_CHECK(kvr_tensors_count(f, &n) == KVR_OK, "count");
    const char* v = nullptr;
    (void)kvr_tensors_metadata_get(f, "model", &v);
    for (size_t t = 0; t < n; ++t) {
      const char* name = nullptr;
      if (kvr_tensors_name_at(f, t, &name) != KVR_OK) {
        FUZZ_CHECK(false, "tensors iteration %d: name_at(%zu) failed below count %zu", i, t, n);
        continue;
      }
      kvr_tensor_ref ref;
      s = kvr_tensors_get(f, name, &ref);
      FUZZ_CHECK(s == KVR_OK, "tensors iteration %d: get(%s) gave %s", i, name, kvr_status_str(s));
      if (s != KVR_OK) continue;
      uint64_t elems = 1;
      for (uint32_t r = 0; r < ref.rank; ++r) elems *= ref.shape[r];
      if (uint64_t es = dtype_size(ref.dtype))
        FUZZ_CHECK(elems * es == ref.nbytes, "tensors iteration %d: %s is %" PRIu64 " bytes for %" PRIu64 " elements",
                   i, name, ref.nbytes, elems);
      // The view lies inside the file: compare it with the file's own bytes.
      const auto* p = static_cast<const uint8_t*>(ref.data);
      FUZZ_CHECK(ref.nbytes <= bytes.size(), "tensors iteration %d: view larger than the file", i);
      buf.assign(ref.nbytes, 0);
      size_t got = 0;
      s = kvr_tensors_read_into(f, name, buf.data(), buf.size(), &got);
      FUZZ_CHECK(s == KVR_OK && got == ref.nbytes, "tensors iteration %d: read_into(%s) gave %s", i,
                 name, kvr_status_str(s));
      if (s == KVR_OK && ref.nbytes) {
        FUZZ_CHECK(std::memcmp(buf.data(), p, ref.nbytes) == 0,
                   "tensors iteration %d: read_into and the view disagree", i);
        buf2.assign(ref.nbytes, 0);
        s = kvr_tensors_read_into_direct(f, name, buf2.data(), buf2.size(), &got);
        FUZZ_CHECK(s == KVR_OK && buf2 == buf, "tensors iteration %d: read_into_direct gave %s", i,
                   kvr_status_str(s));
      }
      if (ref.nbytes > 0) {  // a too-small buffer is refused, not overrun
        s = kvr_tensors_read_into(f, name, buf.data(), ref.nbytes - 1, &got);
        FUZZ_CHECK(s == KVR_ERR_TOO_SMALL, "tensors iteration %d: short buffer gave %s", i,
                   kvr_status_str(s));
      }
    }
    kvr_tensors_close(f);
  }
  std::printf("tensor files: %d mutations, %d refused at open, %d opened and read in full\n", iters,
              refused, opened);
}

// ---- region export files ----
void fuzz_region(const std::string& dir, int iters, Rng& rng) {
  kvr_region_config cfg;
  must(kvr_region_config_default(&cfg), "region defaults");
  cfg.name = "fuzz";
  cfg.dir = dir.c_str();  // not /dev/shm: nothing outlives the test's directory
  cfg.num_blocks = 16;
  cfg.cpu_page_size = 512;
  cfg.num_workers = 2;
  cfg.rank = KVR_RANK_SCHEDULER;
  kvr_region* region = nullptr;
  must(kvr_region_open(&cfg, &region), "region open");
  kvr_view rows;
  must(kvr_region_row_view(region, &rows), "row view");
  const uint64_t ids[] = {1, 4, 7, 15};
  std::vector<std::vector<uint8_t>> want;
  for (uint64_t id : ids) {
    want.push_back(pattern(500 + id, rows.bytes_per_block));
    std::memcpy(rows.base + id * rows.row_stride, want.back().data(), rows.bytes_per_block);
  }
  std::string path = dir + "/export.safetensors";
  must(kvr_region_export(region, ids, 4, path.c_str(), KVR_TENSORS_NO_SYNC), "export");
  const auto orig = read_file(path);
  int imported = 0, refused = 0;
  const size_t total = rows.num_blocks * rows.row_stride;
  for (int i = 0; i < iters; ++i) {
    arm();
    std::memset(rows.base, 0xEE, total);  // sentinel: what an import must not touch
    write_file(path, mutate(orig, orig.size() > 600 ? 600 : orig.size(), rng));
    size_t count = 0;
    kvr_status s = kvr_region_import(region, path.c_str(), &count);
    if (s == KVR_OK) {
      ++imported;
      FUZZ_CHECK(count == 4, "region iteration %d: imported %zu blocks", i, count);
      for (size_t b = 0; b < rows.num_blocks; ++b) {
        const uint8_t* row = rows.base + b * rows.row_stride;
        size_t which = 4;
        for (size_t j = 0; j < 4; ++j)
          if (ids[j] == b) which = j;
        if (which < 4)
          FUZZ_CHECK(std::memcmp(row, want[which].data(), rows.bytes_per_block) == 0,
                     "region iteration %d: row %zu holds wrong bytes after KVR_OK", i, b);
        else
          FUZZ_CHECK(row[0] == 0xEE && std::memcmp(row, row + 1, rows.bytes_per_block - 1) == 0,
                     "region iteration %d: row %zu was written though not exported", i, b);
      }
    } else {
      ++refused;
      FUZZ_CHECK(reported(s),
                 "region iteration %d: import gave %s", i, kvr_status_str(s));
      bool untouched = true;
      for (size_t o = 0; o < total; ++o) untouched &= rows.base[o] == 0xEE;
      FUZZ_CHECK(untouched, "region iteration %d: a failed import (%s) wrote into the region", i,
                 kvr_status_str(s));
    }
  }
  kvr_region_close(region);
  std::printf("region export files: %d mutations, %d refused, %d imported correctly\n", iters,
              refused, imported);
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 1000;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : 20261201;
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/kvr-fuzz.XXXXXX";
  std::vector<char> t(tmpl.begin(), tmpl.end());
  t.push_back('\0');
  if (!mkdtemp(t.data())) {
    std::perror("mkdtemp");
    return 2;
  }
  const std::string dir = t.data();
  std::printf("seed %" PRIu64 ", %d mutations per file kind, in %s\n", seed, iters, dir.c_str());
  Rng rng{seed};
  fuzz_fs(dir, iters, rng);
  fuzz_disk(dir, iters, rng);
  fuzz_tensors(dir, iters, rng);
  fuzz_region(dir, iters, rng);
  alarm(0);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (g_failures) {
    std::fprintf(stderr, "%d failed checks\n", g_failures);
    return 1;
  }
  std::puts("no crash, no hang, no wrong byte served");
  return 0;
}
