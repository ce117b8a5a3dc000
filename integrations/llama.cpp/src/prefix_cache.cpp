// prefix_cache.cpp: how a block's bytes are cut from and put back into a llama.cpp context,
// and how they are named and stored in kvr.
//
// Cut (save): positions [i*N, (i+1)*N) of the sequence are copied to the scratch sequence
// (llama_memory_seq_cp: in a unified KV buffer that only tags the cells, no data moves), the
// scratch sequence's state is taken with llama_state_seq_get_data (exactly those N cells:
// their positions, then each layer's K rows and V rows), and the scratch sequence is removed.
// Restore: the block's state goes into the emptied scratch sequence with
// llama_state_seq_set_data (llama.cpp allocates N cells for it and copies the K/V rows in),
// then llama_memory_seq_cp tags those cells with the target sequence and the scratch
// sequence is removed. K is stored after RoPE at the block's absolute positions, which is why
// a block is keyed by every token before it and restored at the same positions.
//
// A stored block is one buffer: llama.cpp serialises a sequence's cells into one contiguous
// byte stream (cell metadata, then per layer the K rows and the V rows) and has no per-layer
// views of it, so there is nothing to scatter; the buffer is 4096-aligned in address and
// length, so kvr reads and writes it with O_DIRECT in place (no bounce copy).
#include "kvr_llama/prefix_cache.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

#include <kvr.hpp>

#include "sha256.hpp"

#ifndef KVR_LLAMA_CPP_COMMIT
#define KVR_LLAMA_CPP_COMMIT "unknown"
#endif

namespace kvr_llama {
namespace {

constexpr char kBlockMagic[8] = {'K', 'V', 'R', 'L', 'L', 'A', 'M', '2'};
constexpr std::uint32_t kBlockFormatVersion = 2;
constexpr std::size_t kAlign = 4096;  // O_DIRECT: address and length of the block buffer

// A stored block starts with this header and the block's token ids, padded to 4096 bytes,
// then llama.cpp's state of the block, padded to 4096. kvr already verifies the whole key
// (the chain over every token) and the namespace; the header and token check makes the
// block self-describing and keeps even a hash collision from reaching the context.
struct BlockHeader {
  char magic[8];
  std::uint32_t version;
  std::uint32_t block_tokens;
  std::uint64_t block_index;
  std::uint64_t state_bytes;
};
static_assert(sizeof(BlockHeader) == 32, "BlockHeader is stored as-is");

// A block's key: the SHA-256 chain over every token up to its end, then that token count
// (little-endian u32): 36 bytes, the shape of vLLM's block hash + group index.
constexpr std::size_t kKeyBytes = 36;
using BlockKeyBytes = std::array<std::uint8_t, kKeyBytes>;

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// A 4096-aligned byte buffer that only grows. From 2 MiB on it is 2 MiB-aligned and asks for
// transparent huge pages: an O_DIRECT read into 2 MiB pages goes to the device as one request
// per block instead of one per 254 4 KiB pages (the virtio queue's segment limit), and
// pinning it for the transfer touches a few pages instead of ~770 per block.
class AlignedBuffer {
 public:
  std::uint8_t* reserve(std::size_t bytes) {
    if (bytes > cap_) {
      constexpr std::size_t kHuge = std::size_t{2} << 20;
      const std::size_t align = bytes >= kHuge ? kHuge : kAlign;
      const std::size_t cap = round_up(bytes, align);
      void* p = std::aligned_alloc(align, cap);
      if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      if (align == kHuge) ::madvise(p, cap, MADV_HUGEPAGE);  // a hint: 4 KiB pages still work
#endif
      mem_.reset(static_cast<std::uint8_t*>(p));
      cap_ = cap;
    }
    return mem_.get();
  }
  std::uint8_t* data() const noexcept { return mem_.get(); }

 private:
  struct Free {
    void operator()(std::uint8_t* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<std::uint8_t, Free> mem_;
  std::size_t cap_ = 0;
};

// Learns the state size of an N-cell sequence from a 2-token probe: the state is a fixed
// part plus a fixed size per cell, whatever the tokens.
std::size_t probe_block_state_bytes(llama_context* ctx, llama_seq_id scratch, std::uint32_t n) {
  llama_memory_t mem = llama_get_memory(ctx);
  llama_memory_seq_rm(mem, scratch, -1, -1);
  llama_batch batch = llama_batch_init(2, 0, 1);
  for (int i = 0; i < 2; ++i) {
    batch.token[i] = 0;
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = scratch;
    batch.logits[i] = i == 1;
  }
  batch.n_tokens = 2;
  const int rc = llama_decode(ctx, batch);
  llama_batch_free(batch);
  if (rc != 0) {
    llama_memory_seq_rm(mem, scratch, -1, -1);
    throw std::runtime_error("kvr_llama: probe decode failed (" + std::to_string(rc) + ")");
  }
  const std::size_t two = llama_state_seq_get_size(ctx, scratch);
  llama_memory_seq_rm(mem, scratch, 1, -1);
  const std::size_t one = llama_state_seq_get_size(ctx, scratch);
  llama_memory_seq_rm(mem, scratch, -1, -1);
  if (one == 0 || two <= one) throw std::runtime_error("kvr_llama: unexpected sequence state sizes");
  return one + static_cast<std::size_t>(n - 1) * (two - one);
}

// A GGUF metadata string of the model, or "" when absent.
std::string model_meta(const llama_model* model, const std::string& key) {
  char buf[512];
  const int32_t n = llama_model_meta_val_str(model, key.c_str(), buf, sizeof buf);
  if (n < 0) return {};
  return std::string(buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

// A float printed exactly, so two fingerprints differ whenever the values do.
std::string exact(float v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.9g", static_cast<double>(v));  // 9 digits round-trip a float
  return b;
}

// Everything that changes the bytes of a block's state, or whether llama.cpp accepts them,
// as one readable string (the namespace's engine fingerprint). Left out on purpose: n_ctx,
// n_batch, n_seq_max (they size the cache; a cell's bytes do not depend on them), n_ubatch
// (a different micro-batching changes only the summation order of the prefill, so its
// blocks are still a valid KV cache of the same tokens, as in any engine's prefix cache)
// and the thread counts.
std::string engine_fingerprint_of(const CacheConfig& cfg, const std::string& model_digest) {
  const llama_context_params& p = cfg.context_params;
  std::string f = "kvr-llama block v" + std::to_string(kBlockFormatVersion);
  f += "; gguf sha256 " + model_digest;
  f += "; llama.cpp " KVR_LLAMA_CPP_COMMIT;
  f += std::string("; type_k ") + ggml_type_name(p.type_k) + "; type_v " + ggml_type_name(p.type_v);
  // V is stored transposed without flash attention: another layout of the same values.
  f += std::string("; flash_attn ") + llama_flash_attn_type_name(p.flash_attn_type);
  f += "; swa_full " + std::to_string(p.swa_full) + "; kv_unified " + std::to_string(p.kv_unified);
  f += "; ctx_type " + std::to_string(static_cast<int>(p.ctx_type));
  f += "; attention_type " + std::to_string(static_cast<int>(p.attention_type));
  // RoPE/YaRN overrides change K (stored after RoPE).
  f += "; rope_scaling_type " + std::to_string(static_cast<int>(p.rope_scaling_type));
  f += "; rope_freq " + exact(p.rope_freq_base) + " " + exact(p.rope_freq_scale);
  f += "; yarn " + exact(p.yarn_ext_factor) + " " + exact(p.yarn_attn_factor) + " " + exact(p.yarn_beta_fast) +
       " " + exact(p.yarn_beta_slow) + " " + std::to_string(p.yarn_orig_ctx);
  if (!cfg.extra_fingerprint.empty()) f += "; extra " + cfg.extra_fingerprint;
  return f;
}

// "f16" when K and V share a type, else "kq8_0-vf16".
std::string kv_dtype_of(const llama_context_params& p) {
  if (p.type_k == p.type_v) return ggml_type_name(p.type_k);
  return std::string("k") + ggml_type_name(p.type_k) + "-v" + ggml_type_name(p.type_v);
}

std::string file_name_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

std::string file_digest_hex(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("kvr_llama: cannot open " + path + ": " + std::strerror(errno));
  Sha256 h;
  std::vector<std::uint8_t> buf(4 << 20);
  for (;;) {
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error("kvr_llama: cannot read " + path + ": " + std::strerror(err));
    }
    if (got == 0) break;
    h.update(buf.data(), static_cast<std::size_t>(got));
  }
  ::close(fd);
  const Digest256 d = h.finish();
  return to_hex(d.data(), d.size());
}

class PrefixCache::Impl {
 public:
  Impl(llama_context* ctx, const CacheConfig& config);

  std::size_t restore(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);
  std::size_t save(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);

  CacheConfig cfg;
  kvr::Namespace ns;
  std::string ns_name;
  std::size_t state_bytes = 0;    // llama.cpp's state of one block
  std::size_t header_bytes = 0;   // header + tokens, padded to 4096
  std::size_t payload_bytes = 0;  // header page(s) + state, padded to 4096
  std::optional<kvr::FsStore> fs;
  std::optional<kvr::Disk> disk;
  CacheStats stats;

 private:
  std::vector<BlockKeyBytes> block_keys(const std::vector<llama_token>& tokens, std::size_t n_blocks) const;
  void open_slot_file();
  struct Presence {
    std::vector<std::uint8_t> in_slot;  // per candidate block: the slot file holds it
    std::vector<std::uint8_t> in_fs;    // the fs store holds it (asked only where the slot file does not)
    std::size_t covered = 0;            // leading blocks held by one tier or the other
  };
  Presence lookup(const std::vector<kvr::Key>& keys, std::size_t n) const;
  bool block_is_valid(const std::uint8_t* payload, std::size_t index, const llama_token* block_tokens) const;
  bool cut_block(llama_context* ctx, llama_seq_id seq, std::size_t index, const llama_token* block_tokens,
                 std::uint8_t* dst);

  std::size_t ring_slots_ = 0;  // restore: blocks in flight plus the one being applied
  AlignedBuffer ring_;          // restore: block i loads into slot i % ring_slots_
  AlignedBuffer staging_;       // save: the blocks to store
};

PrefixCache::Impl::Impl(llama_context* ctx, const CacheConfig& config) : cfg(config) {
  if (cfg.block_tokens == 0) throw std::runtime_error("kvr_llama: block_tokens must be > 0");
  if (!cfg.context_params.kv_unified) {
    // With one KV stream per sequence, seq_cp between sequences copies whole streams.
    throw std::runtime_error("kvr_llama: the context needs kv_unified = true");
  }
  if (cfg.scratch_seq < 0 || static_cast<std::uint32_t>(cfg.scratch_seq) >= llama_n_seq_max(ctx)) {
    throw std::runtime_error("kvr_llama: scratch_seq must be below the context's n_seq_max");
  }
  state_bytes = probe_block_state_bytes(ctx, cfg.scratch_seq, cfg.block_tokens);
  header_bytes = round_up(sizeof(BlockHeader) + sizeof(llama_token) * cfg.block_tokens, kAlign);
  payload_bytes = header_bytes + round_up(state_bytes, kAlign);
  // The restore ring is allocated and touched here, so a restore's time to first token
  // pays for no page faults (nor, with huge pages, their compaction).
  ring_slots_ = std::max<std::size_t>(1, cfg.restore_window) + 1;
  std::memset(ring_.reserve(ring_slots_ * payload_bytes), 0, ring_slots_ * payload_bytes);

  const llama_model* model = llama_get_model(ctx);
  ns.model_id = cfg.model_id;
  if (ns.model_id.empty()) ns.model_id = model_meta(model, "general.name");
  if (ns.model_id.empty()) ns.model_id = file_name_of(cfg.model_path);
  ns.model_revision = model_meta(model, "general.version");
  ns.kv_dtype = kv_dtype_of(cfg.context_params);
  ns.tokens_per_block = cfg.block_tokens;
  ns.num_layers = static_cast<std::uint32_t>(llama_model_n_layer(model));
  ns.num_kv_heads = static_cast<std::uint32_t>(llama_model_n_head_kv(model));
  const std::string arch = model_meta(model, "general.architecture");
  const std::string key_length = model_meta(model, arch + ".attention.key_length");
  const int32_t n_head = llama_model_n_head(model);
  ns.head_dim = !key_length.empty() ? static_cast<std::uint32_t>(std::strtoul(key_length.c_str(), nullptr, 10))
                : n_head > 0        ? static_cast<std::uint32_t>(llama_model_n_embd(model) / n_head)
                                    : 0;
  ns.bytes_per_block = payload_bytes;
  ns.engine_fingerprint = engine_fingerprint_of(cfg, file_digest_hex(cfg.model_path));
  ns.tenant_salt = cfg.tenant_salt;
  try {
    ns_name = ns.name();
  } catch (const kvr::Error& e) {
    throw std::runtime_error(std::string("kvr_llama: building the namespace: ") + e.what());
  }

  if (!cfg.fs_root.empty()) {
    kvr::FsOptions o;
    o.root = cfg.fs_root;
    o.ns = ns_name;
    o.manifest = ns;  // <root>/<ns>/NAMESPACE.json records the fields (kvr fs inspect)
    try {
      fs.emplace(o);
    } catch (const kvr::Error& e) {
      throw std::runtime_error("kvr_llama: opening the fs store " + cfg.fs_root + ": " + e.what());
    }
  }
  if (!cfg.slot_file.empty()) open_slot_file();
}

void PrefixCache::Impl::open_slot_file() {
  kvr::DiskOptions o;
  o.path = cfg.slot_file;
  o.slot_size = payload_bytes;
  o.num_slots = cfg.slot_count;
  o.ns = ns_name;  // the file's identity: blocks of another namespace never come out of it
  try {
    try {
      disk.emplace(o);
    } catch (const kvr::Error& e) {
      if (e.status() != KVR_ERR_LAYOUT_MISMATCH) throw;
      // A slot file of another namespace or geometry: it is this process's spill, so it is
      // replaced rather than shared.
      ::unlink(cfg.slot_file.c_str());
      disk.emplace(o);
    }
  } catch (const kvr::Error& e) {
    throw std::runtime_error("kvr_llama: opening the slot file " + cfg.slot_file + ": " + e.what());
  }
}

std::vector<BlockKeyBytes> PrefixCache::Impl::block_keys(const std::vector<llama_token>& tokens,
                                                         std::size_t n_blocks) const {
  std::vector<BlockKeyBytes> keys(n_blocks);
  // chain(i) = SHA-256(chain(i-1) || tokens of block i): block i's key covers every token
  // before its end. The namespace is kvr's (the fs directory, the slot file's identity).
  Digest256 chain{};
  for (std::size_t i = 0; i < n_blocks; ++i) {
    Sha256 h;
    h.update(chain.data(), chain.size());
    h.update(tokens.data() + i * cfg.block_tokens, sizeof(llama_token) * cfg.block_tokens);
    chain = h.finish();
    const auto end = static_cast<std::uint32_t>((i + 1) * cfg.block_tokens);
    std::memcpy(keys[i].data(), chain.data(), chain.size());
    for (int b = 0; b < 4; ++b) keys[i][chain.size() + b] = static_cast<std::uint8_t>(end >> (8 * b));
  }
  return keys;
}

bool PrefixCache::Impl::block_is_valid(const std::uint8_t* payload, std::size_t index,
                                       const llama_token* block_tokens) const {
  BlockHeader h;
  std::memcpy(&h, payload, sizeof h);
  return std::memcmp(h.magic, kBlockMagic, sizeof kBlockMagic) == 0 && h.version == kBlockFormatVersion &&
         h.block_tokens == cfg.block_tokens && h.block_index == index && h.state_bytes == state_bytes &&
         std::memcmp(payload + sizeof h, block_tokens, sizeof(llama_token) * cfg.block_tokens) == 0;
}

// Which of blocks 0..n each tier holds, in one presence lookup per tier (the fs store is
// asked only for the blocks the slot file lacks: each one it has not seen costs a stat), and
// how many leading blocks the two hold together.
PrefixCache::Impl::Presence PrefixCache::Impl::lookup(const std::vector<kvr::Key>& keys, std::size_t n) const {
  Presence p;
  p.in_slot.assign(n, 0);
  p.in_fs.assign(n, 0);
  if (disk && kvr_disk_lookup(disk->get(), keys.data(), n, p.in_slot.data(), nullptr) != KVR_OK) {
    std::fill(p.in_slot.begin(), p.in_slot.end(), 0);
  }
  if (fs) {
    std::vector<kvr::Key> ask;
    std::vector<std::size_t> ask_block;
    for (std::size_t i = 0; i < n; ++i) {
      if (p.in_slot[i]) continue;
      ask.push_back(keys[i]);
      ask_block.push_back(i);
    }
    std::vector<std::uint8_t> present(ask.size(), 0);
    if (!ask.empty() && kvr_fs_lookup(fs->get(), ask.data(), ask.size(), present.data(), nullptr) == KVR_OK) {
      for (std::size_t j = 0; j < ask.size(); ++j) p.in_fs[ask_block[j]] = present[j];
    }
  }
  while (p.covered < n && (p.in_slot[p.covered] || p.in_fs[p.covered])) ++p.covered;
  return p;
}

std::size_t PrefixCache::Impl::restore(llama_context* ctx, llama_seq_id seq,
                                       const std::vector<llama_token>& tokens) {
  llama_memory_t mem = llama_get_memory(ctx);
  llama_memory_seq_rm(mem, seq, -1, -1);
  if (tokens.empty()) return 0;
  // Leave at least one token to decode: the caller needs the logits after the prompt.
  const std::size_t candidates = (tokens.size() - 1) / cfg.block_tokens;
  if (candidates == 0 || (!fs && !disk)) {
    ++stats.misses;
    return 0;
  }
  const std::uint64_t t0 = now_ns();
  const std::vector<BlockKeyBytes> key_bytes = block_keys(tokens, candidates);
  std::vector<kvr::Key> keys(candidates);
  for (std::size_t i = 0; i < candidates; ++i) keys[i] = kvr::key(key_bytes[i].data(), kKeyBytes);
  const Presence have = lookup(keys, candidates);
  const std::size_t end = have.covered;

  // The blocks load one job each, a window of them in flight, and are applied in order as
  // they arrive: putting block i into the context (llama_state_seq_set_data, a copy of its
  // K/V rows) overlaps the reads of the next ones instead of following all of them. Block i
  // lands in ring slot i % ring_slots_, free again once block i is applied.
  const std::size_t window = ring_slots_ - 1;
  auto slot_of = [&](std::size_t i) { return ring_.data() + (i % ring_slots_) * payload_bytes; };
  std::vector<kvr::Segment> segs(end);
  std::vector<kvr_disk_read_segments_item> slot_items(end);  // stable: a job writes its meta_len
  std::vector<kvr_fs_load_segments_item> fs_items(end);
  std::vector<char> from_slot(have.in_slot.begin(), have.in_slot.begin() + static_cast<std::ptrdiff_t>(end));
  std::vector<kvr::Job> jobs;  // declared after what they use: destroyed (waited for) first
  jobs.reserve(end);
  auto submit = [&](std::size_t i) {
    segs[i] = kvr::segment(slot_of(i), payload_bytes);
    kvr_job* job = nullptr;
    if (have.in_slot[i]) {
      slot_items[i] = kvr::disk_read_item(keys[i], {&segs[i], 1});
      if (kvr_disk_submit_read_items(disk->get(), &slot_items[i], 1, &job) != KVR_OK) job = nullptr;
    } else {
      fs_items[i] = kvr::fs_load_item(keys[i], {&segs[i], 1});
      if (kvr_fs_submit_load_items(fs->get(), &fs_items[i], 1, &job) != KVR_OK) job = nullptr;
    }
    jobs.emplace_back(job);
  };
  // Waits for block i; true once its bytes are in the staging buffer. A slot entry that
  // failed is fetched from the fs store instead (it may still have the block).
  auto arrived = [&](std::size_t i) -> bool {
    kvr_status s = KVR_ERR_IO;
    std::uint64_t bytes = 0;
    if (jobs[i].get() != nullptr) {
      kvr_job_wait(jobs[i].get(), -1);
      s = kvr_job_item_status(jobs[i].get(), 0, &bytes);
    }
    if (s == KVR_OK && bytes == payload_bytes) return true;
    if (s == KVR_ERR_CORRUPT || (s == KVR_OK && bytes != payload_bytes)) ++stats.rejected;
    if (!have.in_slot[i] || !fs) return false;
    s = kvr_fs_load(fs->get(), keys[i], &segs[i], 1);
    if (s == KVR_OK) {
      from_slot[i] = 0;
      return true;
    }
    if (s != KVR_ERR_NOT_FOUND) ++stats.rejected;
    return false;
  };

  while (jobs.size() < std::min(end, window)) submit(jobs.size());
  std::uint64_t apply_ns = 0;
  std::size_t restored = 0;
  for (; restored < end; ++restored) {
    const bool ok = arrived(restored);
    // Keeps the window full while this one applies (into the slot block i - 1 has left).
    if (jobs.size() < end) submit(jobs.size());
    const std::uint64_t arrived_at = now_ns();
    if (!ok) break;
    const std::uint8_t* payload = slot_of(restored);
    const llama_token* expected = tokens.data() + restored * cfg.block_tokens;
    if (!block_is_valid(payload, restored, expected)) {
      ++stats.rejected;
      break;
    }
    // set_data first empties the scratch sequence; on failure it leaves it empty.
    const bool applied = llama_state_seq_set_data(ctx, payload + header_bytes, state_bytes, cfg.scratch_seq) != 0;
    if (applied) {
      llama_memory_seq_cp(mem, cfg.scratch_seq, seq, -1, -1);
      llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
    }
    apply_ns += now_ns() - arrived_at;
    if (!applied) {
      ++stats.rejected;
      break;
    }
    ++stats.blocks_restored;
    stats.bytes_restored += payload_bytes;
    if (from_slot[restored]) {
      ++stats.slot_hits;
    } else {
      ++stats.fs_hits;
    }
  }
  if (restored < candidates) ++stats.misses;
  jobs.clear();  // a refused block's successors may still be loading: wait for them here
  const std::uint64_t total = now_ns() - t0;
  stats.restore_apply_ns += apply_ns;
  stats.restore_load_ns += total - apply_ns;
  return restored * cfg.block_tokens;
}

// Writes block `index` of `seq` (header, tokens, state, zero padding) to `dst`.
bool PrefixCache::Impl::cut_block(llama_context* ctx, llama_seq_id seq, std::size_t index,
                                  const llama_token* block_tokens, std::uint8_t* dst) {
  llama_memory_t mem = llama_get_memory(ctx);
  const auto p0 = static_cast<llama_pos>(index * cfg.block_tokens);
  const auto p1 = static_cast<llama_pos>((index + 1) * cfg.block_tokens);
  llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
  llama_memory_seq_cp(mem, seq, cfg.scratch_seq, p0, p1);
  std::uint8_t* state = dst + header_bytes;
  const bool ok = llama_state_seq_get_size(ctx, cfg.scratch_seq) == state_bytes &&
                  llama_state_seq_get_data(ctx, state, state_bytes, cfg.scratch_seq) == state_bytes;
  llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
  if (!ok) return false;
  BlockHeader h{};
  std::memcpy(h.magic, kBlockMagic, sizeof kBlockMagic);
  h.version = kBlockFormatVersion;
  h.block_tokens = cfg.block_tokens;
  h.block_index = index;
  h.state_bytes = state_bytes;
  std::memset(dst, 0, header_bytes);
  std::memcpy(dst, &h, sizeof h);
  std::memcpy(dst + sizeof h, block_tokens, sizeof(llama_token) * cfg.block_tokens);
  std::memset(state + state_bytes, 0, payload_bytes - header_bytes - state_bytes);
  return true;
}

std::size_t PrefixCache::Impl::save(llama_context* ctx, llama_seq_id seq,
                                    const std::vector<llama_token>& tokens) {
  llama_memory_t mem = llama_get_memory(ctx);
  if (llama_memory_seq_pos_min(mem, seq) != 0) return 0;  // empty, or not a prefix from 0
  const auto held = static_cast<std::size_t>(llama_memory_seq_pos_max(mem, seq) + 1);
  const std::size_t n_blocks = std::min(tokens.size(), held) / cfg.block_tokens;
  if (n_blocks == 0 || (!fs && !disk)) return 0;
  const std::vector<BlockKeyBytes> key_bytes = block_keys(tokens, n_blocks);
  std::vector<kvr::Key> keys(n_blocks);
  for (std::size_t i = 0; i < n_blocks; ++i) keys[i] = kvr::key(key_bytes[i].data(), kKeyBytes);

  // What each tier lacks, in one lookup per tier (a tier that is not open lacks nothing).
  std::vector<std::uint8_t> in_slot(n_blocks, 1);
  std::vector<std::uint8_t> in_fs(n_blocks, 1);
  if (disk && kvr_disk_lookup(disk->get(), keys.data(), n_blocks, in_slot.data(), nullptr) != KVR_OK) {
    std::fill(in_slot.begin(), in_slot.end(), 0);
  }
  if (fs && kvr_fs_lookup(fs->get(), keys.data(), n_blocks, in_fs.data(), nullptr) != KVR_OK) {
    std::fill(in_fs.begin(), in_fs.end(), 0);  // the fs store deduplicates a block that exists
  }
  std::vector<std::size_t> todo;
  for (std::size_t i = 0; i < n_blocks; ++i) {
    if (!in_slot[i] || !in_fs[i]) todo.push_back(i);
  }
  if (todo.empty()) return 0;

  // Cut every missing block into the staging buffer, then store them in one batch per tier.
  std::uint8_t* base = staging_.reserve(todo.size() * payload_bytes);
  std::vector<kvr::Segment> segs;
  for (std::size_t j = 0; j < todo.size(); ++j) {
    std::uint8_t* dst = base + j * payload_bytes;
    if (!cut_block(ctx, seq, todo[j], tokens.data() + todo[j] * cfg.block_tokens, dst)) {
      ++stats.store_errors;
      todo.resize(j);
      break;
    }
    segs.push_back(kvr::segment(dst, payload_bytes));
  }
  std::vector<kvr_disk_write_segments_item> slot_items;
  std::vector<std::size_t> slot_todo;
  std::vector<kvr_fs_store_segments_item> fs_items;
  std::vector<std::size_t> fs_todo;
  for (std::size_t j = 0; j < todo.size(); ++j) {
    if (!in_slot[todo[j]]) {
      slot_items.push_back(kvr::disk_write_item(keys[todo[j]], {&segs[j], 1}));
      slot_todo.push_back(j);
    }
    if (!in_fs[todo[j]]) {
      fs_items.push_back(kvr::fs_store_item(keys[todo[j]], {&segs[j], 1}));
      fs_todo.push_back(j);
    }
  }
  kvr_job* slot_job = nullptr;
  kvr_job* fs_job = nullptr;
  const bool slot_submitted =
      !slot_items.empty() &&
      kvr_disk_submit_write_items(disk->get(), slot_items.data(), slot_items.size(), &slot_job) == KVR_OK;
  const bool fs_submitted = !fs_items.empty() && kvr_fs_submit_store_items(fs->get(), fs_items.data(),
                                                                           fs_items.size(), &fs_job) == KVR_OK;
  const kvr::Job slot_owner(slot_job);
  const kvr::Job fs_owner(fs_job);
  if (!slot_items.empty() && !slot_submitted) stats.store_errors += slot_items.size();
  if (!fs_items.empty() && !fs_submitted) stats.store_errors += fs_items.size();

  std::vector<char> stored(todo.size(), 0);
  auto collect = [&](kvr_job* job, const std::vector<std::size_t>& which) {
    kvr_job_wait(job, -1);
    for (std::size_t k = 0; k < which.size(); ++k) {
      if (kvr_job_item_status(job, k, nullptr) == KVR_OK) {
        stored[which[k]] = 1;
      } else {
        ++stats.store_errors;  // the block stays unsaved in that tier
      }
    }
  };
  if (slot_submitted) collect(slot_job, slot_todo);
  if (fs_submitted) collect(fs_job, fs_todo);
  const auto written = static_cast<std::size_t>(std::count(stored.begin(), stored.end(), 1));
  stats.blocks_saved += written;
  return written;
}

PrefixCache::PrefixCache(llama_context* ctx, const CacheConfig& config)
    : impl_(std::make_unique<Impl>(ctx, config)) {}
PrefixCache::~PrefixCache() = default;

std::size_t PrefixCache::restore(llama_context* ctx, llama_seq_id seq,
                                 const std::vector<llama_token>& tokens) {
  return impl_->restore(ctx, seq, tokens);
}

std::size_t PrefixCache::save(llama_context* ctx, llama_seq_id seq,
                              const std::vector<llama_token>& tokens) {
  return impl_->save(ctx, seq, tokens);
}

const std::string& PrefixCache::namespace_name() const noexcept { return impl_->ns_name; }
const std::string& PrefixCache::engine_fingerprint() const noexcept { return impl_->ns.engine_fingerprint; }
std::size_t PrefixCache::block_bytes() const noexcept { return impl_->payload_bytes; }
std::size_t PrefixCache::block_state_bytes() const noexcept { return impl_->state_bytes; }
const CacheStats& PrefixCache::stats() const noexcept { return impl_->stats; }

}  // namespace kvr_llama
