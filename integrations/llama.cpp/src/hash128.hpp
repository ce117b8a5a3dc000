// hash128.hpp: a 128-bit non-cryptographic hash for block keys and the model fingerprint.
// Four 64-bit multiply-rotate lanes over 32-byte stripes, finalised so that each half of the
// result depends on every lane. Accidental collisions are negligible at 128 bits; it is not
// meant to resist an adversary choosing inputs (the block header check backs it up).
#ifndef KVR_LLAMA_HASH128_HPP
#define KVR_LLAMA_HASH128_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace kvr_llama {

/// A 128-bit digest as 16 bytes (little-endian halves).
using Digest128 = std::array<std::uint8_t, 16>;

/// Streaming 128-bit hasher: feed bytes with update(), read the digest with finish().
class Hasher128 {
 public:
  explicit Hasher128(std::uint64_t seed = 0) noexcept;
  /// Adds `len` bytes at `data`.
  void update(const void* data, std::size_t len) noexcept;
  /// Adds the bytes of a trivially copyable value.
  template <typename T>
  void update_value(const T& v) noexcept {
    update(&v, sizeof v);
  }
  /// The digest of everything added so far (the hasher may go on being fed).
  Digest128 finish() const noexcept;

 private:
  void stripe(const std::uint8_t* p) noexcept;

  std::array<std::uint64_t, 4> lanes_;
  std::array<std::uint8_t, 32> pending_{};
  std::size_t pending_len_ = 0;
  std::uint64_t total_len_ = 0;
};

/// Lower-case hex of a digest (32 characters).
std::string to_hex(const Digest128& d);

}  // namespace kvr_llama

#endif
