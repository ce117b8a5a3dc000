#include "sha256.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace kvr_llama {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_->md);
    throw std::runtime_error("kvr_llama: cannot start a SHA-256 digest");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_->md); }

void Sha256::update(const void* data, std::size_t len) {
  if (len > 0 && EVP_DigestUpdate(ctx_->md, data, len) != 1) {
    throw std::runtime_error("kvr_llama: SHA-256 update failed");
  }
}

Digest256 Sha256::finish() {
  Digest256 d{};
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx_->md, d.data(), &n) != 1 || n != d.size()) {
    throw std::runtime_error("kvr_llama: SHA-256 final failed");
  }
  return d;
}

std::string to_hex(const std::uint8_t* data, std::size_t len) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(2 * len);
  for (std::size_t i = 0; i < len; ++i) {
    s.push_back(digits[data[i] >> 4]);
    s.push_back(digits[data[i] & 15]);
  }
  return s;
}

}  // namespace kvr_llama
