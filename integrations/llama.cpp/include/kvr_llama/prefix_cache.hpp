// prefix_cache.hpp: a block-granular prefix KV cache for a llama.cpp context, stored in kvr's
// tiers: the slot file (this process's local spill) and the fs block store (shared between
// engine processes and hosts).
//
// A prompt is cut into blocks of `block_tokens` tokens. Block i's key is a whole engine key
// (36 bytes: the SHA-256 chain over every token up to the block's end, and that token
// count), inside a kvr namespace (kvr_namespace_config: model id, KV dtype, block geometry
// and an engine fingerprint of everything that changes the state bytes: the GGUF file's
// digest, the llama.cpp commit, the KV cache types, ...), so a block is only ever restored
// into a context that would have computed the same bytes.
#ifndef KVR_LLAMA_PREFIX_CACHE_HPP
#define KVR_LLAMA_PREFIX_CACHE_HPP

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llama.h"

namespace kvr_llama {

/// How to open a prefix cache.
struct CacheConfig {
  /// The GGUF file the context's model was loaded from (its bytes are fingerprinted).
  std::string model_path;
  /// The namespace's model id; empty: the GGUF's `general.name`, else the file name.
  std::string model_id;
  /// The parameters the context was created with (KV types, flash attention, RoPE overrides
  /// and the unified KV buffer go into the fingerprint). `kv_unified` must be true.
  llama_context_params context_params{};
  /// Tokens per block. Decoding is bit-exact after a restore when `context_params.n_ubatch`
  /// divides it (the rest is then cut into the same micro-batches as a full recompute).
  std::uint32_t block_tokens = 256;
  /// A sequence id the cache stages blocks in (below `n_seq_max`, never used by the caller).
  llama_seq_id scratch_seq = 1;
  /// Root of the shared fs block store; empty: no fs tier.
  std::string fs_root;
  /// Path of this process's slot file; empty: no slot tier.
  std::string slot_file;
  /// Blocks the slot file holds (least recently used ones are evicted).
  std::uint64_t slot_count = 256;
  /// Anything else the caller knows changes the state bytes (added to the fingerprint).
  std::string extra_fingerprint;
  /// Tenant salt (any bytes; only its SHA-256 is recorded): tenants with different salts
  /// never share blocks. Empty: none.
  std::string tenant_salt;
  /// Blocks a restore keeps loading ahead of the one it is putting into the context (each
  /// block is applied as soon as it arrived, while the next ones load). The cache holds
  /// `restore_window + 1` blocks of memory for this, allocated when it opens.
  std::size_t restore_window = 4;
};

/// What the cache did, since it was opened.
struct CacheStats {
  std::uint64_t blocks_restored = 0;   ///< blocks loaded into a context
  std::uint64_t slot_hits = 0;         ///< of those, served by the slot file
  std::uint64_t fs_hits = 0;           ///< of those, served by the fs store
  std::uint64_t misses = 0;            ///< restores that stopped at an absent block
  std::uint64_t rejected = 0;          ///< blocks found but refused (corrupt, wrong header, refused by llama.cpp)
  std::uint64_t blocks_saved = 0;      ///< blocks written by save()
  std::uint64_t store_errors = 0;      ///< block writes a tier refused (the block stays unsaved there)
  std::uint64_t bytes_restored = 0;    ///< block payload bytes loaded into contexts
  /// restore()'s time not spent applying: lookups and waiting for block bytes. With
  /// restore_apply_ns it adds up to the whole time spent in restore().
  std::uint64_t restore_load_ns = 0;
  std::uint64_t restore_apply_ns = 0;  ///< putting blocks into the context (loads of later blocks overlap it)
};

/// A prefix cache over one model and context configuration. Not thread-safe.
class PrefixCache {
 public:
  /// Opens the tiers and fingerprints the model. Runs one 2-token probe decode on
  /// `scratch_seq` of `ctx` to learn the size of a block's state (it overwrites the context's
  /// last logits). Throws std::runtime_error on a bad configuration or a kvr error.
  PrefixCache(llama_context* ctx, const CacheConfig& config);
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  /// Clears `seq`, then loads the longest cached block-aligned prefix of `tokens` into it
  /// (positions from 0) and returns how many tokens it holds: the caller decodes the rest
  /// from that position. At least one token is always left to decode, so the caller gets
  /// logits. A block that is absent, corrupt or refused ends the prefix there (a miss).
  std::size_t restore(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);

  /// Stores the full blocks of `tokens` that `seq` holds (positions from 0) and that are not
  /// stored yet, in every tier. Returns the number of blocks written.
  std::size_t save(llama_context* ctx, llama_seq_id seq, const std::vector<llama_token>& tokens);

  /// The kvr namespace (`kvr_namespace_name`): the fs store's `namespace_name` and the slot
  /// file's identity, e.g. "kvr-random-llama-bench-seed1.f16.tp0of1.pp0.cp0.<32 hex>".
  const std::string& namespace_name() const noexcept;
  /// The namespace's engine fingerprint: every input that changes the state bytes, readable.
  const std::string& engine_fingerprint() const noexcept;
  /// Bytes of one stored block (header page with the tokens, llama.cpp's state of the
  /// block, padding to 4096).
  std::size_t block_bytes() const noexcept;
  /// Bytes of llama.cpp's state of one block (llama_state_seq_get_data of its cells).
  std::size_t block_state_bytes() const noexcept;
  /// Counters since open.
  const CacheStats& stats() const noexcept;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// SHA-256 (64 hex digits) of a file's bytes, as used for the model fingerprint.
std::string file_digest_hex(const std::string& path);

}  // namespace kvr_llama

#endif
