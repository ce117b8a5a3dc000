// prefix_cache.cpp: how a block's bytes are cut from and put back into a llama.cpp context.
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
#include "kvr_llama/prefix_cache.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "hash128.hpp"
#include "kvr.h"

#ifndef KVR_LLAMA_CPP_COMMIT
#define KVR_LLAMA_CPP_COMMIT "unknown"
#endif

namespace kvr_llama {
namespace {

constexpr char kBlockMagic[8] = {'K', 'V', 'R', 'L', 'L', 'A', 'M', '1'};
constexpr std::uint32_t kBlockFormatVersion = 1;

// Every stored block starts with this header, then the block's token ids, then llama.cpp's
// state bytes. A restore checks all of it against what it expects, so even a 128-bit key
// collision cannot put another prefix's state into the context.
struct BlockHeader {
  char magic[8];
  std::uint32_t version;
  std::uint32_t block_tokens;
  std::uint64_t block_index;
  std::uint64_t state_bytes;
  std::uint8_t namespace_digest[16];
  std::uint8_t chain[16];  // digest of every token up to the block's end
};
static_assert(sizeof(BlockHeader) == 64, "BlockHeader is stored as-is");

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

[[noreturn]] void throw_kvr(const std::string& what, kvr_status status) {
  throw std::runtime_error("kvr_llama: " + what + ": " + kvr_status_str(status) + ": " +
                           kvr_last_error_message());
}

// One block's identity: the chained digest of the tokens up to its end, and its kvr key.
struct BlockId {
  Digest128 chain;
  kvr_block_key key;
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

Digest128 namespace_digest(const CacheConfig& cfg, const std::string& model_digest,
                           std::size_t state_bytes) {
  const llama_context_params& p = cfg.context_params;
  Hasher128 h;
  const std::string tag = "kvr-llama prefix cache v1";
  h.update(tag.data(), tag.size());
  h.update(model_digest.data(), model_digest.size());
  const std::string commit = KVR_LLAMA_CPP_COMMIT;
  h.update(commit.data(), commit.size());
  // Everything in the context parameters that changes the K/V bytes or their layout.
  h.update_value(static_cast<std::int32_t>(p.type_k));
  h.update_value(static_cast<std::int32_t>(p.type_v));
  h.update_value(static_cast<std::int32_t>(p.flash_attn_type));
  h.update_value(static_cast<std::int32_t>(p.ctx_type));
  h.update_value(static_cast<std::int32_t>(p.rope_scaling_type));
  h.update_value(static_cast<std::int32_t>(p.attention_type));
  h.update_value(p.rope_freq_base);
  h.update_value(p.rope_freq_scale);
  h.update_value(p.yarn_ext_factor);
  h.update_value(p.yarn_attn_factor);
  h.update_value(p.yarn_beta_fast);
  h.update_value(p.yarn_beta_slow);
  h.update_value(p.yarn_orig_ctx);
  h.update_value(static_cast<std::uint8_t>(p.swa_full));
  h.update_value(static_cast<std::uint8_t>(p.kv_unified));
  h.update_value(cfg.block_tokens);
  h.update_value(static_cast<std::uint64_t>(state_bytes));
  h.update(cfg.extra_fingerprint.data(), cfg.extra_fingerprint.size());
  return h.finish();
}

}  // namespace

std::string file_digest_hex(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("kvr_llama: cannot open " + path + ": " + std::strerror(errno));
  Hasher128 h;
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
  return to_hex(h.finish());
}

class PrefixCache::Impl {
 public:
  Impl(llama_context* ctx, const CacheConfig& config);
  ~Impl();

  std::size_t restore(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);
  std::size_t save(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);

  CacheConfig cfg;
  Digest128 ns_digest{};
  std::string ns_name;
  std::size_t state_bytes = 0;    // llama.cpp's state of one block
  std::size_t payload_bytes = 0;  // header + tokens + state
  kvr_fs* fs = nullptr;
  kvr_disk* disk = nullptr;
  CacheStats stats;
  std::vector<std::uint8_t> staging;  // restore: blocks as loaded; save: one block

 private:
  std::vector<BlockId> block_ids(const std::vector<llama_token>& tokens, std::size_t n_blocks) const;
  void open_slot_file();
  std::size_t load_blocks(const std::vector<BlockId>& ids, std::size_t n, std::vector<char>& from_slot);
  bool block_is_valid(const std::uint8_t* payload, std::size_t index, const BlockId& id,
                      const llama_token* block_tokens) const;
  std::uint8_t* cut_block(llama_context* ctx, llama_seq_id seq, std::size_t index, const BlockId& id,
                          const llama_token* block_tokens);
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
  payload_bytes = sizeof(BlockHeader) + sizeof(llama_token) * cfg.block_tokens + state_bytes;
  ns_digest = namespace_digest(cfg, file_digest_hex(cfg.model_path), state_bytes);
  ns_name = "llama-" + to_hex(ns_digest);

  if (!cfg.fs_root.empty()) {
    kvr_fs_config fc;
    kvr_fs_config_default(&fc);
    fc.root = cfg.fs_root.c_str();
    fc.namespace_name = ns_name.c_str();
    const kvr_status s = kvr_fs_open(&fc, &fs);
    if (s != KVR_OK) throw_kvr("opening the fs store " + cfg.fs_root, s);
  }
  if (!cfg.slot_file.empty()) open_slot_file();
}

void PrefixCache::Impl::open_slot_file() {
  kvr_disk_config dc;
  kvr_disk_config_default(&dc);
  dc.path = cfg.slot_file.c_str();
  dc.slot_size = payload_bytes;
  dc.num_slots = cfg.slot_count;
  kvr_status s = kvr_disk_open(&dc, &disk);
  if (s == KVR_ERR_LAYOUT_MISMATCH) {
    // A slot file of another geometry (another model or block size): it is this process's
    // spill, so it is replaced rather than shared.
    ::unlink(cfg.slot_file.c_str());
    s = kvr_disk_open(&dc, &disk);
  }
  if (s != KVR_OK) {
    kvr_fs_close(fs);
    fs = nullptr;
    throw_kvr("opening the slot file " + cfg.slot_file, s);
  }
}

PrefixCache::Impl::~Impl() {
  kvr_disk_close(disk);
  kvr_fs_close(fs);
}

std::vector<BlockId> PrefixCache::Impl::block_ids(const std::vector<llama_token>& tokens,
                                                  std::size_t n_blocks) const {
  std::vector<BlockId> ids(n_blocks);
  Hasher128 chain;  // runs over every token so far: block i's chain covers all before its end
  for (std::size_t i = 0; i < n_blocks; ++i) {
    chain.update(tokens.data() + i * cfg.block_tokens, sizeof(llama_token) * cfg.block_tokens);
    ids[i].chain = chain.finish();
    Hasher128 key;
    key.update(ns_digest.data(), ns_digest.size());
    key.update(ids[i].chain.data(), ids[i].chain.size());
    const Digest128 k = key.finish();
    std::memcpy(ids[i].key.bytes, k.data(), k.size());
  }
  return ids;
}

bool PrefixCache::Impl::block_is_valid(const std::uint8_t* payload, std::size_t index,
                                       const BlockId& id, const llama_token* block_tokens) const {
  BlockHeader h;
  std::memcpy(&h, payload, sizeof h);
  return std::memcmp(h.magic, kBlockMagic, sizeof kBlockMagic) == 0 &&
         h.version == kBlockFormatVersion && h.block_tokens == cfg.block_tokens &&
         h.block_index == index && h.state_bytes == state_bytes &&
         std::memcmp(h.namespace_digest, ns_digest.data(), 16) == 0 &&
         std::memcmp(h.chain, id.chain.data(), 16) == 0 &&
         std::memcmp(payload + sizeof h, block_tokens, sizeof(llama_token) * cfg.block_tokens) == 0;
}

// Loads blocks 0.. of `ids` into `staging` (block i at i * payload_bytes), each from the slot
// file if it has it, else from the fs store, and returns how many leading blocks loaded.
std::size_t PrefixCache::Impl::load_blocks(const std::vector<BlockId>& ids, std::size_t n,
                                           std::vector<char>& from_slot) {
  staging.resize(n * payload_bytes);
  from_slot.assign(n, 0);
  std::vector<char> loaded(n, 0);
  if (disk != nullptr && n > 0) {
    std::vector<kvr_disk_read_item> ops(n);
    for (std::size_t i = 0; i < n; ++i) {
      ops[i] = kvr_disk_read_item{};
      ops[i].key = ids[i].key;
      ops[i].dst = staging.data() + i * payload_bytes;
      ops[i].dst_cap = payload_bytes;
    }
    kvr_job* job = nullptr;
    if (kvr_disk_submit_read(disk, ops.data(), n, &job) == KVR_OK) {
      kvr_job_wait(job, -1);
      for (std::size_t i = 0; i < n; ++i) {
        const kvr_status s = kvr_job_item_status(job, i, nullptr);
        if (s == KVR_OK && ops[i].len == payload_bytes) {
          loaded[i] = from_slot[i] = 1;
        } else if (s == KVR_ERR_CORRUPT) {
          ++stats.rejected;  // kvr dropped the entry; the fs store may still have the block
        }
      }
    }
    kvr_job_free(job);
  }
  // The prefix the two tiers cover together, then the fs loads it needs, in one batch.
  std::size_t end = 0;
  std::vector<kvr_fs_load_item> items;
  std::vector<std::size_t> item_block;
  for (; end < n; ++end) {
    if (loaded[end]) continue;
    bool present = false;
    if (fs == nullptr || kvr_fs_contains(fs, &ids[end].key, &present) != KVR_OK || !present) break;
    items.push_back(kvr_fs_load_item{ids[end].key, staging.data() + end * payload_bytes, payload_bytes});
    item_block.push_back(end);
  }
  if (!items.empty()) {
    kvr_job* job = nullptr;
    if (kvr_fs_submit_load(fs, items.data(), items.size(), &job) == KVR_OK) {
      kvr_job_wait(job, -1);
      for (std::size_t j = 0; j < items.size(); ++j) {
        const kvr_status s = kvr_job_item_status(job, j, nullptr);
        if (s == KVR_OK) {
          loaded[item_block[j]] = 1;
        } else if (s != KVR_ERR_NOT_FOUND) {
          ++stats.rejected;  // corrupt (kvr removed the file) or of another length
        }
      }
    }
    kvr_job_free(job);
  }
  std::size_t good = 0;
  while (good < end && loaded[good]) ++good;
  return good;
}

std::size_t PrefixCache::Impl::restore(llama_context* ctx, llama_seq_id seq,
                                       const std::vector<llama_token>& tokens) {
  llama_memory_t mem = llama_get_memory(ctx);
  llama_memory_seq_rm(mem, seq, -1, -1);
  if (tokens.empty()) return 0;
  // Leave at least one token to decode: the caller needs the logits after the prompt.
  const std::size_t candidates = (tokens.size() - 1) / cfg.block_tokens;
  if (candidates == 0 || (fs == nullptr && disk == nullptr)) {
    ++stats.misses;
    return 0;
  }
  const std::vector<BlockId> ids = block_ids(tokens, candidates);

  const std::uint64_t t0 = now_ns();
  std::vector<char> from_slot;
  const std::size_t loaded = load_blocks(ids, candidates, from_slot);
  const std::uint64_t t1 = now_ns();

  std::size_t restored = 0;
  for (; restored < loaded; ++restored) {
    const std::uint8_t* payload = staging.data() + restored * payload_bytes;
    const llama_token* expected = tokens.data() + restored * cfg.block_tokens;
    if (!block_is_valid(payload, restored, ids[restored], expected)) {
      ++stats.rejected;
      break;
    }
    const std::uint8_t* state = payload + sizeof(BlockHeader) + sizeof(llama_token) * cfg.block_tokens;
    // set_data first empties the scratch sequence; on failure it leaves it empty.
    if (llama_state_seq_set_data(ctx, state, state_bytes, cfg.scratch_seq) == 0) {
      ++stats.rejected;
      break;
    }
    llama_memory_seq_cp(mem, cfg.scratch_seq, seq, -1, -1);
    llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
    ++stats.blocks_restored;
    stats.bytes_restored += payload_bytes;
    if (from_slot[restored]) {
      ++stats.slot_hits;
    } else {
      ++stats.fs_hits;
    }
  }
  if (restored < candidates) ++stats.misses;
  stats.restore_load_ns += t1 - t0;
  stats.restore_apply_ns += now_ns() - t1;
  return restored * cfg.block_tokens;
}

// Writes block `index` of `seq` (header, tokens, state) into `staging`; nullptr on failure.
std::uint8_t* PrefixCache::Impl::cut_block(llama_context* ctx, llama_seq_id seq, std::size_t index,
                                           const BlockId& id, const llama_token* block_tokens) {
  llama_memory_t mem = llama_get_memory(ctx);
  const auto p0 = static_cast<llama_pos>(index * cfg.block_tokens);
  const auto p1 = static_cast<llama_pos>((index + 1) * cfg.block_tokens);
  llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
  llama_memory_seq_cp(mem, seq, cfg.scratch_seq, p0, p1);
  staging.resize(payload_bytes);
  std::uint8_t* state = staging.data() + sizeof(BlockHeader) + sizeof(llama_token) * cfg.block_tokens;
  const bool ok = llama_state_seq_get_size(ctx, cfg.scratch_seq) == state_bytes &&
                  llama_state_seq_get_data(ctx, state, state_bytes, cfg.scratch_seq) == state_bytes;
  llama_memory_seq_rm(mem, cfg.scratch_seq, -1, -1);
  if (!ok) return nullptr;
  BlockHeader h{};
  std::memcpy(h.magic, kBlockMagic, sizeof kBlockMagic);
  h.version = kBlockFormatVersion;
  h.block_tokens = cfg.block_tokens;
  h.block_index = index;
  h.state_bytes = state_bytes;
  std::memcpy(h.namespace_digest, ns_digest.data(), 16);
  std::memcpy(h.chain, id.chain.data(), 16);
  std::memcpy(staging.data(), &h, sizeof h);
  std::memcpy(staging.data() + sizeof h, block_tokens, sizeof(llama_token) * cfg.block_tokens);
  return staging.data();
}

std::size_t PrefixCache::Impl::save(llama_context* ctx, llama_seq_id seq,
                                    const std::vector<llama_token>& tokens) {
  llama_memory_t mem = llama_get_memory(ctx);
  if (llama_memory_seq_pos_min(mem, seq) != 0) return 0;  // empty, or not a prefix from 0
  const auto held = static_cast<std::size_t>(llama_memory_seq_pos_max(mem, seq) + 1);
  const std::size_t n_blocks = std::min(tokens.size(), held) / cfg.block_tokens;
  const std::vector<BlockId> ids = block_ids(tokens, n_blocks);
  std::size_t written = 0;
  for (std::size_t i = 0; i < n_blocks; ++i) {
    bool in_slot = true;
    bool in_fs = true;
    if (disk != nullptr && kvr_disk_contains(disk, &ids[i].key, &in_slot) != KVR_OK) in_slot = false;
    if (fs != nullptr && kvr_fs_contains(fs, &ids[i].key, &in_fs) != KVR_OK) in_fs = false;
    if (in_slot && in_fs) continue;
    const llama_token* block_tokens = tokens.data() + i * cfg.block_tokens;
    const std::uint8_t* payload = cut_block(ctx, seq, i, ids[i], block_tokens);
    if (payload == nullptr) {
      ++stats.store_errors;
      break;
    }
    bool stored = false;
    if (!in_slot) {
      const kvr_status s = kvr_disk_write(disk, &ids[i].key, payload, payload_bytes, nullptr, 0);
      stored = stored || s == KVR_OK;
      if (s != KVR_OK) ++stats.store_errors;
    }
    if (!in_fs) {
      const kvr_status s = kvr_store_block(fs, &ids[i].key, payload, payload_bytes);
      stored = stored || s == KVR_OK;
      if (s != KVR_OK) ++stats.store_errors;
    }
    if (stored) ++written;
  }
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
std::size_t PrefixCache::block_bytes() const noexcept { return impl_->payload_bytes; }
const CacheStats& PrefixCache::stats() const noexcept { return impl_->stats; }

}  // namespace kvr_llama
