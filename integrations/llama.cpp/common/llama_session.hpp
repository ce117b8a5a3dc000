// llama_session.hpp: the engine side shared by the tests and the benchmark: one model, one
// context with a unified KV buffer and a scratch sequence for the cache, prompt decoding in
// n_batch chunks and the last token's logits.
#ifndef KVR_LLAMA_SESSION_HPP
#define KVR_LLAMA_SESSION_HPP

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "llama.h"

namespace kvr_llama {

/// Sequence ids of a session: the caller's sequence and the one the cache stages blocks in.
constexpr llama_seq_id kMainSeq = 0;
constexpr llama_seq_id kScratchSeq = 1;

/// Context parameters for `n_ctx` tokens, micro-batches of `n_ubatch` tokens, F16 KV
/// cache unless `type_k` says otherwise; two sequences in one unified KV buffer.
inline llama_context_params session_params(std::uint32_t n_ctx, std::uint32_t n_ubatch,
                                           ggml_type type_k = GGML_TYPE_F16) {
  llama_context_params p = llama_context_default_params();
  p.n_ctx = n_ctx;
  p.n_batch = n_ctx;
  p.n_ubatch = n_ubatch;
  p.n_seq_max = 2;
  p.kv_unified = true;
  p.type_k = type_k;
  p.type_v = GGML_TYPE_F16;
  p.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  const unsigned hw = std::thread::hardware_concurrency();
  p.n_threads = p.n_threads_batch = static_cast<int32_t>(hw == 0 ? 2 : hw);
  p.no_perf = true;
  return p;
}

/// A loaded model and one context over it.
class Session {
 public:
  Session(const std::string& model_path, const llama_context_params& params)
      : model_path_(model_path), params_(params) {
    llama_model_params mp = llama_model_default_params();
    model_ = llama_model_load_from_file(model_path.c_str(), mp);
    if (model_ == nullptr) throw std::runtime_error("cannot load model " + model_path);
    ctx_ = llama_init_from_model(model_, params_);
    if (ctx_ == nullptr) {
      llama_model_free(model_);
      throw std::runtime_error("cannot create a context for " + model_path);
    }
  }
  ~Session() {
    llama_free(ctx_);
    llama_model_free(model_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  llama_context* ctx() const noexcept { return ctx_; }
  const llama_context_params& params() const noexcept { return params_; }
  const std::string& model_path() const noexcept { return model_path_; }
  int32_t n_vocab() const { return llama_vocab_n_tokens(llama_model_get_vocab(model_)); }

  /// Empties the whole KV cache (every sequence).
  void clear() { llama_memory_clear(llama_get_memory(ctx_), true); }

  /// Decodes tokens[from..] into `seq` at positions from..; logits of the last token only.
  void decode_from(const std::vector<llama_token>& tokens, std::size_t from,
                   llama_seq_id seq = kMainSeq) {
    const std::size_t chunk = params_.n_batch;
    llama_batch batch = llama_batch_init(static_cast<int32_t>(chunk), 0, 1);
    for (std::size_t start = from; start < tokens.size(); start += chunk) {
      const std::size_t end = std::min(tokens.size(), start + chunk);
      batch.n_tokens = static_cast<int32_t>(end - start);
      for (std::size_t i = start; i < end; ++i) {
        const std::size_t j = i - start;
        batch.token[j] = tokens[i];
        batch.pos[j] = static_cast<llama_pos>(i);
        batch.n_seq_id[j] = 1;
        batch.seq_id[j][0] = seq;
        batch.logits[j] = i + 1 == tokens.size();
      }
      if (llama_decode(ctx_, batch) != 0) {
        llama_batch_free(batch);
        throw std::runtime_error("llama_decode failed");
      }
    }
    llama_batch_free(batch);
  }

  /// The logits after the last decoded token.
  std::vector<float> last_logits() const {
    const float* l = llama_get_logits_ith(ctx_, -1);
    if (l == nullptr) throw std::runtime_error("no logits");
    return std::vector<float>(l, l + n_vocab());
  }

 private:
  std::string model_path_;
  llama_context_params params_;
  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
};

/// `n` pseudo-random token ids in [3, n_vocab) from `seed` (deterministic).
inline std::vector<llama_token> random_tokens(std::size_t n, std::uint64_t seed, int32_t n_vocab) {
  std::vector<llama_token> t(n);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& tok : t) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    tok = static_cast<llama_token>(3 + x % static_cast<std::uint64_t>(n_vocab - 3));
  }
  return t;
}

/// Seconds since `t0`.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Silences llama.cpp's info logging (errors still reach stderr).
inline void quiet_llama_logs() {
  llama_log_set(
      [](ggml_log_level level, const char* text, void*) {
        if (level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
      },
      nullptr);
}

}  // namespace kvr_llama

#endif
