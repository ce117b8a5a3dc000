// sha256.hpp: SHA-256 (OpenSSL's libcrypto) for the chained block keys and the model file's
// digest. A cryptographic hash, so a block key names one token prefix: kvr compares the
// whole key on every load, and no two prefixes can be made to share one.
#ifndef KVR_LLAMA_SHA256_HPP
#define KVR_LLAMA_SHA256_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kvr_llama {

/// A SHA-256 digest.
using Digest256 = std::array<std::uint8_t, 32>;

/// Streaming SHA-256: feed bytes with update(), read the digest once with finish().
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  /// Adds `len` bytes at `data`.
  void update(const void* data, std::size_t len);
  /// The digest of everything added (the hasher is spent afterwards).
  Digest256 finish();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

/// Lower-case hex of `len` bytes at `data`.
std::string to_hex(const std::uint8_t* data, std::size_t len);

}  // namespace kvr_llama

#endif
