#include "hash128.hpp"

#include <algorithm>
#include <cstring>

namespace kvr_llama {
namespace {

constexpr std::uint64_t kMul1 = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio
constexpr std::uint64_t kMul2 = 0xC2B2AE3D27D4EB4Full;
constexpr std::uint64_t kMul3 = 0x165667B19E3779F9ull;

inline std::uint64_t rotl(std::uint64_t x, int r) noexcept { return (x << r) | (x >> (64 - r)); }

inline std::uint64_t load64(const std::uint8_t* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, sizeof v);  // the keys are only compared on little-endian hosts' own output
  return v;
}

// Bijective 64-bit finaliser (xor-shift-multiply), so distinct lane states stay distinct.
inline std::uint64_t avalanche(std::uint64_t x) noexcept {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

}  // namespace

Hasher128::Hasher128(std::uint64_t seed) noexcept
    : lanes_{seed ^ kMul1, seed + kMul2, rotl(seed, 17) ^ kMul3, ~seed} {}

void Hasher128::stripe(const std::uint8_t* p) noexcept {
  for (int i = 0; i < 4; ++i) {
    lanes_[i] ^= load64(p + 8 * i) * kMul2;
    lanes_[i] = rotl(lanes_[i], 31) * kMul1;
  }
}

void Hasher128::update(const void* data, std::size_t len) noexcept {
  const auto* p = static_cast<const std::uint8_t*>(data);
  total_len_ += len;
  if (pending_len_ > 0) {
    const std::size_t take = std::min(len, pending_.size() - pending_len_);
    std::memcpy(pending_.data() + pending_len_, p, take);
    pending_len_ += take;
    p += take;
    len -= take;
    if (pending_len_ < pending_.size()) return;
    stripe(pending_.data());
    pending_len_ = 0;
  }
  for (; len >= 32; p += 32, len -= 32) stripe(p);
  std::memcpy(pending_.data(), p, len);
  pending_len_ = len;
}

Digest128 Hasher128::finish() const noexcept {
  Hasher128 h = *this;
  // Pad the tail with zeros and its length, so "ab" and "ab\0" differ.
  std::array<std::uint8_t, 32> tail{};
  std::memcpy(tail.data(), h.pending_.data(), h.pending_len_);
  tail[31] = static_cast<std::uint8_t>(h.pending_len_);
  h.stripe(tail.data());
  const auto& l = h.lanes_;
  const std::uint64_t lo =
      avalanche(l[0] + rotl(l[1], 7) + rotl(l[2], 12) + rotl(l[3], 18) + h.total_len_ * kMul3);
  const std::uint64_t hi = avalanche((l[0] ^ rotl(l[2], 29)) * kMul1 + (l[1] ^ rotl(l[3], 41)) + lo);
  Digest128 d;
  std::memcpy(d.data(), &lo, 8);
  std::memcpy(d.data() + 8, &hi, 8);
  return d;
}

std::string to_hex(const Digest128& d) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(32);
  for (std::uint8_t b : d) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

}  // namespace kvr_llama
