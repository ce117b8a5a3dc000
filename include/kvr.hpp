// kvr.hpp: header-only C++17 layer over kvr.h. RAII owners close their handles, failures
// throw kvr::Error carrying the status code and kvr's message. Hand-written (kvr.h is generated).
//
// Every owner class is move-only: copies are deleted (a handle has one owner, closed once),
// moves and destructors are noexcept (asserted at the end of this file). What must not be
// dropped is [[nodiscard]]: above all a Job, whose destructor waits for the batch, so a
// discarded Job would turn an async submit into a blocking one.
#ifndef KVR_HPP
#define KVR_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvr.h"

namespace kvr {

/// A failed kvr call: the status code and kvr_last_error_message() at the time of failure.
class Error : public std::runtime_error {
 public:
  Error(kvr_status status, const std::string& what)
      : std::runtime_error(std::string(kvr_status_str(status)) + ": " + what), status_(status) {}
  [[nodiscard]] kvr_status status() const noexcept { return status_; }

 private:
  kvr_status status_;
};

/// Throws kvr::Error if `s` is not KVR_OK.
inline void check(kvr_status s) {
  if (s != KVR_OK) throw Error(s, kvr_last_error_message());
}

/// A non-owning view of contiguous bytes (std::span<std::byte> for C++17).
template <typename T>
class Span {
 public:
  constexpr Span() noexcept = default;
  constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }
  constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// One tensor's strided view across all blocks of a region (valid while the region is open).
class View {
 public:
  View() = default;
  explicit View(const kvr_view& v) : v_(v) {}
  /// Block `b` of this tensor: `bytes_per_block()` bytes (throws std::out_of_range).
  Span<std::uint8_t> block(std::uint64_t b) const {
    if (b >= v_.num_blocks) throw std::out_of_range("kvr::View::block: block out of range");
    return {v_.base + b * v_.row_stride, static_cast<std::size_t>(v_.bytes_per_block)};
  }
  std::uint8_t* base() const noexcept { return v_.base; }
  std::uint64_t num_blocks() const noexcept { return v_.num_blocks; }
  std::uint64_t bytes_per_block() const noexcept { return v_.bytes_per_block; }
  std::uint64_t row_stride() const noexcept { return v_.row_stride; }
  const kvr_view& raw() const noexcept { return v_; }

 private:
  kvr_view v_{};
};

/// Move-only owner of a handle `H`, closed with `Close` on destruction.
template <typename H, void (*Close)(H*)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(H* h) noexcept : h_(h) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) reset(std::exchange(o.h_, nullptr));
    return *this;
  }
  ~Handle() noexcept { reset(); }
  void reset(H* h = nullptr) noexcept {
    if (h_) Close(h_);
    h_ = h;
  }
  [[nodiscard]] H* get() const noexcept { return h_; }
  /// Gives up ownership: the caller must close the returned handle.
  [[nodiscard]] H* release() noexcept { return std::exchange(h_, nullptr); }
  explicit operator bool() const noexcept { return h_ != nullptr; }

 private:
  H* h_ = nullptr;
};

/// Builder-style options for Region (defaults as kvr_region_config_default).
struct RegionOptions {
  std::string name;
  std::string dir;  // empty: /dev/shm
  std::uint64_t num_blocks = 0;
  std::uint64_t cpu_page_size = 0;
  std::uint32_t num_workers = 1;
  std::int32_t rank = 0;  // or KVR_RANK_SCHEDULER
  std::uint32_t flags = KVR_REGION_CREATE;
  std::uint32_t attach_timeout_ms = 10000;
};

/// A shared host region (kvr_region_open / kvr_region_close).
class Region {
 public:
  explicit Region(const RegionOptions& o) {
    kvr_region_config c;
    check(kvr_region_config_default(&c));
    c.name = o.name.c_str();
    c.dir = o.dir.empty() ? nullptr : o.dir.c_str();
    c.num_blocks = o.num_blocks;
    c.cpu_page_size = o.cpu_page_size;
    c.num_workers = o.num_workers;
    c.rank = o.rank;
    c.flags = o.flags;
    c.attach_timeout_ms = o.attach_timeout_ms;
    kvr_region* r = nullptr;
    check(kvr_region_open(&c, &r));
    h_.reset(r);
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
  Region(Region&&) noexcept = default;
  Region& operator=(Region&&) noexcept = default;
  ~Region() noexcept = default;
  /// The next tensor's view of this rank's slices (`tensor_page_size` bytes per block).
  View create_view(std::uint64_t tensor_page_size) {
    kvr_view v;
    check(kvr_create_view(h_.get(), tensor_page_size, &v));
    return View(v);
  }
  /// The whole-row view (scheduler side).
  [[nodiscard]] View row_view() const {
    kvr_view v;
    check(kvr_region_row_view(h_.get(), &v));
    return View(v);
  }
  [[nodiscard]] kvr_region_info info() const {
    kvr_region_info i{};
    i.struct_size = sizeof(i);
    check(kvr_region_get_info(h_.get(), &i));
    return i;
  }
  [[nodiscard]] kvr_region* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_region, kvr_region_close> h_;
};

/// Owner of an async batch job; destruction waits for it (kvr_job_free), so keep it until
/// the batch may block.
class [[nodiscard]] Job {
 public:
  explicit Job(kvr_job* j) noexcept : h_(j) {}
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
  Job(Job&&) noexcept = default;
  Job& operator=(Job&&) noexcept = default;
  ~Job() noexcept = default;
  /// Waits for every item (timeout_ms < 0: no bound); throws on timeout.
  void wait(std::int64_t timeout_ms = -1) const { check(kvr_job_wait(h_.get(), timeout_ms)); }
  [[nodiscard]] kvr_job_progress poll() const {
    kvr_job_progress p{};
    check(kvr_job_poll(h_.get(), &p));
    return p;
  }
  /// Status of item `i` (does not throw); bytes moved in `*bytes` when KVR_OK.
  [[nodiscard]] kvr_status item_status(std::size_t i,
                                       std::uint64_t* bytes = nullptr) const noexcept {
    return kvr_job_item_status(h_.get(), i, bytes);
  }
  [[nodiscard]] kvr_job* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_job, kvr_job_free> h_;
};

// ---- storage tiers: each adds its owner class below, in its own section ----

/// A block key: 16 bytes (the engine's block hash), the same in every tier.
using BlockKey = kvr_block_key;

/// A block key from its first 16 bytes at `p`.
[[nodiscard]] inline BlockKey make_key(const void* p) noexcept {
  BlockKey k;
  const auto* b = static_cast<const std::uint8_t*>(p);
  for (int i = 0; i < 16; i++) k.bytes[i] = b[i];
  return k;
}

/// A whole engine key (1..=KVR_MAX_KEY_LEN bytes), borrowed: its bytes must outlive the call
/// (a batch item's key is copied at submit). Stored in full in the block and compared on
/// every load; a 16-byte key is the same block as the BlockKey of those bytes.
using Key = kvr_key;

/// The key of `n` bytes at `p`.
[[nodiscard]] inline Key key(const void* p, std::size_t n) noexcept {
  return Key{static_cast<const std::uint8_t*>(p), n};
}
/// The key of a string's bytes (SGLang's hex page hash, an LMCache tuple rendered...).
[[nodiscard]] inline Key key(std::string_view s) noexcept { return key(s.data(), s.size()); }
/// The key of a byte vector's bytes (vLLM's block hash + group index...).
[[nodiscard]] inline Key key(const std::vector<std::uint8_t>& v) noexcept {
  return key(v.data(), v.size());
}
/// The 16-byte key of a BlockKey (the same block in every tier).
[[nodiscard]] inline Key key(const BlockKey& k) noexcept { return key(k.bytes, sizeof k.bytes); }

/// One buffer of a block (`len` bytes at `ptr`): a block is an ordered list of them, gathered
/// on store and scattered on load (one per layer, or K and V of a page).
using Segment = kvr_segment;
/// A segment list: (pointer, count) of Segments, e.g. `{segs.data(), segs.size()}`.
using Segments = Span<const Segment>;
/// A list of keys for lookups.
using Keys = Span<const Key>;

/// The segment of `n` bytes at `p` (a store only reads it).
[[nodiscard]] inline Segment segment(const void* p, std::size_t n) noexcept {
  return Segment{const_cast<void*>(p), n};
}

/// A kvr_fs_submit_store_items item (struct_size set).
[[nodiscard]] inline kvr_fs_store_segments_item fs_store_item(Key k, Segments s) noexcept {
  return kvr_fs_store_segments_item{sizeof(kvr_fs_store_segments_item), k, s.data(), s.size()};
}
/// A kvr_fs_submit_load_items item (struct_size set).
[[nodiscard]] inline kvr_fs_load_segments_item fs_load_item(Key k, Segments s) noexcept {
  return kvr_fs_load_segments_item{sizeof(kvr_fs_load_segments_item), k, s.data(), s.size()};
}
/// A kvr_disk_submit_write_items item (struct_size set).
[[nodiscard]] inline kvr_disk_write_segments_item disk_write_item(
    Key k, Segments s, const void* meta = nullptr, std::uint64_t meta_len = 0) noexcept {
  return kvr_disk_write_segments_item{sizeof(kvr_disk_write_segments_item), k, s.data(),
                                      s.size(), static_cast<const std::uint8_t*>(meta),
                                      meta_len};
}
/// A kvr_disk_submit_read_items item (struct_size set; its meta_len is filled by the job).
[[nodiscard]] inline kvr_disk_read_segments_item disk_read_item(
    Key k, Segments s, void* meta_dst = nullptr, std::uint64_t meta_cap = 0) noexcept {
  return kvr_disk_read_segments_item{sizeof(kvr_disk_read_segments_item), k, s.data(), s.size(),
                                     static_cast<std::uint8_t*>(meta_dst), meta_cap, 0};
}

/// One presence byte per key (1: present), as the *_lookup calls answer.
struct Presence {
  std::vector<std::uint8_t> present;
  std::size_t hits = 0;
};

namespace detail {
/// True for KVR_OK, false for KVR_ERR_NOT_FOUND (an expected miss); throws any other failure.
inline bool found(kvr_status s) {
  if (s == KVR_ERR_NOT_FOUND) return false;
  check(s);
  return true;
}

/// Runs a kvr_*_submit_* call and owns the job it returns.
template <typename Tier, typename Item>
Job submit(kvr_status (*fn)(const Tier*, Item*, std::size_t, kvr_job**), const Tier* tier,
           Item* items, std::size_t n) {
  kvr_job* j = nullptr;
  check(fn(tier, items, n, &j));
  return Job(j);
}

/// The C functions of the fs tier, named for BlockTier.
struct FsCalls {
  using handle = kvr_fs;
  using stats = kvr_fs_stats;
  using store_item = kvr_fs_store_item;
  using load_item = kvr_fs_load_item;
  using store_segments_item = kvr_fs_store_segments_item;
  using load_segments_item = kvr_fs_load_segments_item;
  static constexpr auto close = kvr_fs_close;
  static constexpr auto store_block = kvr_store_block;
  static constexpr auto load_block = kvr_load_block;
  static constexpr auto contains = kvr_fs_contains;
  static constexpr auto lookup_prefix = kvr_fs_lookup_prefix;
  static constexpr auto remove = kvr_fs_remove;
  static constexpr auto get_stats = kvr_fs_get_stats;
  static constexpr auto submit_store = kvr_fs_submit_store;
  static constexpr auto submit_load = kvr_fs_submit_load;
  static constexpr auto store_key = kvr_fs_store;
  static constexpr auto load_key = kvr_fs_load;
  static constexpr auto lookup = kvr_fs_lookup;
  static constexpr auto remove_key = kvr_fs_remove_key;
  static constexpr auto submit_store_items = kvr_fs_submit_store_items;
  static constexpr auto submit_load_items = kvr_fs_submit_load_items;
};

/// The C functions of the object tier, named for BlockTier.
struct ObjCalls {
  using handle = kvr_obj;
  using stats = kvr_obj_stats;
  using store_item = kvr_obj_store_item;
  using load_item = kvr_obj_load_item;
  using store_segments_item = kvr_obj_store_segments_item;
  using load_segments_item = kvr_obj_load_segments_item;
  static constexpr auto close = kvr_obj_close;
  static constexpr auto store_block = kvr_obj_store;
  static constexpr auto load_block = kvr_obj_load;
  static constexpr auto contains = kvr_obj_contains;
  static constexpr auto lookup_prefix = kvr_obj_lookup_prefix;
  static constexpr auto remove = kvr_obj_remove;
  static constexpr auto get_stats = kvr_obj_get_stats;
  static constexpr auto submit_store = kvr_obj_submit_store;
  static constexpr auto submit_load = kvr_obj_submit_load;
  static constexpr auto store_key = kvr_obj_store_key;
  static constexpr auto load_key = kvr_obj_load_key;
  static constexpr auto lookup = kvr_obj_lookup;
  static constexpr auto remove_key = kvr_obj_remove_key;
  static constexpr auto submit_store_items = kvr_obj_submit_store_items;
  static constexpr auto submit_load_items = kvr_obj_submit_load_items;
};

/// The per-key and batch calls FsStore and ObjStore share (their C functions have the same
/// shapes, named by `C`). Each owner adds its constructor and what only it has.
template <typename C>
class BlockTier {
 public:
  BlockTier(const BlockTier&) = delete;
  BlockTier& operator=(const BlockTier&) = delete;
  /// Stores `len` bytes (a no-op if the block exists).
  void store(const BlockKey& k, const void* src, std::size_t len) {
    check(C::store_block(h_.get(), &k, src, len));
  }
  /// Loads the block into `dst`; false if there is none. Throws kvr::Error otherwise
  /// (KVR_ERR_LAYOUT_MISMATCH: other length; see the owner class for its other failures).
  [[nodiscard]] bool load(const BlockKey& k, void* dst, std::size_t len) {
    return found(C::load_block(h_.get(), &k, dst, len));
  }
  [[nodiscard]] bool contains(const BlockKey& k) const {
    bool yes = false;
    check(C::contains(h_.get(), &k, &yes));
    return yes;
  }
  /// How many leading keys exist (the reusable prompt prefix).
  [[nodiscard]] std::size_t lookup_prefix(const BlockKey* keys, std::size_t n) const {
    std::size_t hits = 0;
    check(C::lookup_prefix(h_.get(), keys, n, &hits));
    return hits;
  }
  /// Removes the block; false if there was none.
  bool remove(const BlockKey& k) { return found(C::remove(h_.get(), &k)); }
  [[nodiscard]] typename C::stats stats() const {
    typename C::stats s{};
    s.struct_size = sizeof(s);
    check(C::get_stats(h_.get(), &s));
    return s;
  }
  /// Stores a batch (in parallel); `items`' buffers must outlive the job.
  Job submit_store(const typename C::store_item* items, std::size_t n) {
    return submit(C::submit_store, h_.get(), items, n);
  }
  /// Loads a batch (in parallel); `items`' buffers must outlive the job.
  Job submit_load(const typename C::load_item* items, std::size_t n) {
    return submit(C::submit_load, h_.get(), items, n);
  }
  /// Stores the concatenation of `segs` under the whole key `k`, publish-once (a no-op if it
  /// exists). A 16-byte key is the same block as the BlockKey of those bytes.
  void store(Key k, Segments segs) { check(C::store_key(h_.get(), k, segs.data(), segs.size())); }
  /// Loads `k`'s block scattered over `segs` (which must sum to its payload, else
  /// KVR_ERR_LAYOUT_MISMATCH); false if there is none.
  [[nodiscard]] bool load(Key k, Segments segs) {
    return found(C::load_key(h_.get(), k, segs.data(), segs.size()));
  }
  /// Per-key presence into `present` (one byte per key); returns the number present.
  std::size_t lookup(Keys keys, std::uint8_t* present) const {
    std::size_t hits = 0;
    check(C::lookup(h_.get(), keys.data(), keys.size(), present, &hits));
    return hits;
  }
  [[nodiscard]] Presence lookup(Keys keys) const {
    Presence p;
    p.present.resize(keys.size());
    p.hits = lookup(keys, p.present.data());
    return p;
  }
  /// Removes the block of the whole key `k`; false if there was none.
  bool remove_key(Key k) { return found(C::remove_key(h_.get(), k)); }
  /// Stores a batch of whole-key, segmented blocks (items from fs_store_item()); the buffers
  /// must outlive the Job.
  Job submit_store_items(const typename C::store_segments_item* items, std::size_t n) {
    return submit(C::submit_store_items, h_.get(), items, n);
  }
  /// Loads a batch of whole-key, segmented blocks (items from fs_load_item()); the buffers
  /// must outlive the Job.
  Job submit_load_items(const typename C::load_segments_item* items, std::size_t n) {
    return submit(C::submit_load_items, h_.get(), items, n);
  }
  [[nodiscard]] typename C::handle* get() const noexcept { return h_.get(); }

 protected:
  BlockTier() = default;
  BlockTier(BlockTier&&) noexcept = default;
  BlockTier& operator=(BlockTier&&) noexcept = default;
  ~BlockTier() noexcept = default;
  Handle<typename C::handle, C::close> h_;
};
}  // namespace detail


// ---- namespaces (kvr_namespace_*) ----

/// What makes KV blocks compatible, and whose they are; name() is the canonical namespace
/// (the same on every host; any field changed gives another) for FsOptions::ns and
/// DiskOptions::ns.
struct Namespace {
  std::string model_id;  // required
  std::string model_revision;
  std::string kv_dtype;
  std::uint32_t tokens_per_block = 0;
  std::uint32_t num_layers = 0;
  std::uint32_t num_kv_heads = 0;
  std::uint32_t head_dim = 0;
  std::uint64_t bytes_per_block = 0;
  std::uint32_t tp_size = 1;
  std::uint32_t tp_rank = 0;
  std::uint32_t pp_rank = 0;
  std::uint32_t cp_rank = 0;
  std::string engine_fingerprint;
  std::string tenant_salt;  // any bytes; only its digest is ever recorded

  /// The C config, pointing into this object's strings (valid while it lives, unchanged).
  [[nodiscard]] kvr_namespace_config to_c() const {
    kvr_namespace_config c;
    check(kvr_namespace_config_default(&c));
    c.model_id = model_id.c_str();
    c.model_revision = model_revision.c_str();
    c.kv_dtype = kv_dtype.c_str();
    c.tokens_per_block = tokens_per_block;
    c.num_layers = num_layers;
    c.num_kv_heads = num_kv_heads;
    c.head_dim = head_dim;
    c.bytes_per_block = bytes_per_block;
    c.tp_size = tp_size;
    c.tp_rank = tp_rank;
    c.pp_rank = pp_rank;
    c.cp_rank = cp_rank;
    c.engine_fingerprint = engine_fingerprint.c_str();
    c.tenant_salt = reinterpret_cast<const std::uint8_t*>(tenant_salt.data());
    c.tenant_salt_len = tenant_salt.size();
    return c;
  }

  /// The canonical name (kvr_namespace_name); throws kvr::Error on invalid fields.
  [[nodiscard]] std::string name() const {
    const kvr_namespace_config c = to_c();
    std::size_t need = 0;
    kvr_status s = kvr_namespace_name(&c, nullptr, 0, &need);
    if (s != KVR_ERR_TOO_SMALL) check(s);
    std::string n(need, '\0');
    check(kvr_namespace_name(&c, &n[0], n.size(), &need));
    n.resize(need - 1);
    return n;
  }
};

// ---- logging and metrics (kvr_set_log_callback, kvr_metrics_text) ----

/// A log sink: (KVR_LOG_* level, target such as "kvr::fs", message). Called from any kvr
/// thread, possibly concurrently, never with a kvr lock held (it may call kvr); must not throw.
using LogFn = std::function<void(std::uint32_t level, const char* target, const char* message)>;

namespace detail {
inline std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
// Never destroyed: a kvr thread may still log while static destructors run at exit.
inline std::unique_ptr<LogFn>& log_slot() {
  static auto* fn = new std::unique_ptr<LogFn>();
  return *fn;
}
inline void log_trampoline(std::uint32_t level, const char* target, const char* message,
                           void* user) {
  try {
    (*static_cast<LogFn*>(user))(level, target, message);
  } catch (...) {  // never into kvr
  }
}
}  // namespace detail

/// Sends kvr's log records at or above `min_level` (KVR_LOG_*) to `fn`; an empty `fn`
/// restores the default (warnings and errors to stderr, each distinct message once).
/// The previous sink is freed only after kvr stopped calling it.
inline void set_log_callback(std::uint32_t min_level, LogFn fn) {
  std::lock_guard<std::mutex> lock(detail::log_mutex());
  std::unique_ptr<LogFn> next = fn ? std::make_unique<LogFn>(std::move(fn)) : nullptr;
  check(kvr_set_log_callback(min_level, next ? &detail::log_trampoline : nullptr, next.get()));
  detail::log_slot().swap(next);  // `next` now holds the old sink: no call of it is running
}

/// Every open handle's counters, gauges and latency histograms in the Prometheus text
/// exposition format (kvr_metrics_text), for the engine's own /metrics endpoint.
[[nodiscard]] inline std::string metrics_text() {
  std::size_t need = 0;
  for (;;) {
    kvr_status s = kvr_metrics_text(nullptr, 0, &need);
    if (s != KVR_ERR_TOO_SMALL) check(s);
    std::string text(need + 4096, '\0');  // room for handles opened meanwhile
    s = kvr_metrics_text(&text[0], text.size(), &need);
    if (s == KVR_ERR_TOO_SMALL) continue;
    check(s);
    text.resize(need - 1);
    return text;
  }
}

// ---- disk slot file: local spill of fixed-size blocks, crash-safe LRU index ----

/// Options for Disk (defaults as kvr_disk_config_default).
struct DiskOptions {
  std::string path;
  std::uint64_t slot_size = 0;  // payload capacity per slot, rounded up to 4096
  std::uint64_t num_slots = 0;
  std::uint32_t io_threads = 4;
  std::uint32_t direct_io = KVR_DIRECT_IO_AUTO;
  bool verify = true;  // check payload+metadata checksums on read
  bool sync = false;   // fdatasync each write (power-loss safety)
  std::string ns;      // identity recorded in the file (Namespace::name()); empty: none
};

/// Lengths of an entry read back.
struct DiskEntry {
  std::uint64_t len = 0;
  std::uint64_t meta_len = 0;
};

/// A disk slot file (kvr_disk_open / kvr_disk_close): created and reserved, or reopened
/// and recovered. One owner per file: a second open throws KVR_ERR_BUSY.
class Disk {
 public:
  explicit Disk(const DiskOptions& o) {
    kvr_disk_config c;
    check(kvr_disk_config_default(&c));
    c.path = o.path.c_str();
    c.slot_size = o.slot_size;
    c.num_slots = o.num_slots;
    c.io_threads = o.io_threads;
    c.direct_io = o.direct_io;
    c.verify = o.verify;
    c.sync = o.sync;
    c.namespace_name = o.ns.empty() ? nullptr : o.ns.c_str();
    kvr_disk* d = nullptr;
    check(kvr_disk_open(&c, &d));
    h_.reset(d);
  }
  Disk(const Disk&) = delete;
  Disk& operator=(const Disk&) = delete;
  Disk(Disk&&) noexcept = default;
  Disk& operator=(Disk&&) noexcept = default;
  ~Disk() noexcept = default;
  /// Stores `len` bytes (and optional metadata) under `key`; may evict the LRU entry.
  void write(const BlockKey& key, const void* src, std::uint64_t len, const void* meta = nullptr,
             std::uint64_t meta_len = 0) {
    check(kvr_disk_write(h_.get(), &key, static_cast<const std::uint8_t*>(src), len,
                         static_cast<const std::uint8_t*>(meta), meta_len));
  }
  /// Reads `key` into `dst`; throws KVR_ERR_NOT_FOUND, KVR_ERR_CORRUPT, KVR_ERR_TOO_SMALL...
  DiskEntry read(const BlockKey& key, void* dst, std::uint64_t cap, void* meta = nullptr,
                 std::uint64_t meta_cap = 0) {
    DiskEntry e;
    check(kvr_disk_read(h_.get(), &key, static_cast<std::uint8_t*>(dst), cap, &e.len,
                        static_cast<std::uint8_t*>(meta), meta_cap, &e.meta_len));
    return e;
  }
  /// Like read(), but a miss (not found, or a corrupt entry that was dropped) returns false.
  [[nodiscard]] bool try_read(const BlockKey& key, void* dst, std::uint64_t cap, DiskEntry* out = nullptr,
                void* meta = nullptr, std::uint64_t meta_cap = 0) {
    DiskEntry e;
    kvr_status s = kvr_disk_read(h_.get(), &key, static_cast<std::uint8_t*>(dst), cap,
                                 &e.len, static_cast<std::uint8_t*>(meta), meta_cap, &e.meta_len);
    if (s == KVR_ERR_NOT_FOUND || s == KVR_ERR_CORRUPT) return false;
    check(s);
    if (out) *out = e;
    return true;
  }
  [[nodiscard]] bool contains(const BlockKey& key) const {
    bool b = false;
    check(kvr_disk_contains(h_.get(), &key, &b));
    return b;
  }
  /// Removes `key`'s entry; false if there was none.
  bool remove(const BlockKey& key) { return detail::found(kvr_disk_remove(h_.get(), &key)); }
  [[nodiscard]] kvr_disk_stats stats() const {
    kvr_disk_stats s{};
    s.struct_size = sizeof(s);
    check(kvr_disk_get_stats(h_.get(), &s));
    return s;
  }
  /// Async batch of writes; buffers must outlive the returned Job.
  Job submit_write(const kvr_disk_write_item* items, std::size_t n) {
    return detail::submit(kvr_disk_submit_write, h_.get(), items, n);
  }
  /// Async batch of reads; `items` (whose len/meta_len are filled) and buffers must outlive it.
  Job submit_read(kvr_disk_read_item* items, std::size_t n) {
    return detail::submit(kvr_disk_submit_read, h_.get(), items, n);
  }
  /// Stores the concatenation of `segs` (and optional metadata) under the whole key `k`.
  void write_segments(Key k, Segments segs, const void* meta = nullptr,
                      std::uint64_t meta_len = 0) {
    check(kvr_disk_write_segments(h_.get(), k, segs.data(), segs.size(),
                                  static_cast<const std::uint8_t*>(meta), meta_len));
  }
  /// Reads `k`'s entry scattered over `segs` (which must sum to its payload, else
  /// KVR_ERR_LAYOUT_MISMATCH); false if there is none. `*meta_len` (optional) receives the
  /// metadata length.
  [[nodiscard]] bool read_segments(Key k, Segments segs, void* meta = nullptr,
                                   std::uint64_t meta_cap = 0,
                                   std::uint64_t* meta_len = nullptr) {
    return detail::found(kvr_disk_read_segments(h_.get(), k, segs.data(), segs.size(),
                                                static_cast<std::uint8_t*>(meta), meta_cap,
                                                meta_len));
  }
  /// Per-key presence from the index (no I/O) into `present` (one byte per key); returns
  /// the number present.
  std::size_t lookup(Keys keys, std::uint8_t* present) const {
    std::size_t hits = 0;
    check(kvr_disk_lookup(h_.get(), keys.data(), keys.size(), present, &hits));
    return hits;
  }
  [[nodiscard]] Presence lookup(Keys keys) const {
    Presence p;
    p.present.resize(keys.size());
    p.hits = lookup(keys, p.present.data());
    return p;
  }
  /// Removes the entry of the whole key `k`; false if there was none.
  bool remove_key(Key k) { return detail::found(kvr_disk_remove_key(h_.get(), k)); }
  /// Async batch of whole-key, segmented writes; the buffers must outlive the Job.
  Job submit_write_items(const kvr_disk_write_segments_item* items, std::size_t n) {
    return detail::submit(kvr_disk_submit_write_items, h_.get(), items, n);
  }
  /// Async batch of whole-key, segmented reads; `items` (whose meta_len is filled) and the
  /// buffers must outlive the Job.
  Job submit_read_items(kvr_disk_read_segments_item* items, std::size_t n) {
    return detail::submit(kvr_disk_submit_read_items, h_.get(), items, n);
  }
  [[nodiscard]] kvr_disk* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_disk, kvr_disk_close> h_;
};

// ---- fs block store (kvr_fs_*) ----

/// Builder-style options for FsStore (defaults as kvr_fs_config_default).
struct FsOptions {
  std::string root;                 // required
  std::string ns;                   // namespace, required unless `manifest` is set
  std::optional<Namespace> manifest;  // recorded as <root>/<ns>/NAMESPACE.json; ns defaults to its name()
  std::int32_t rank = KVR_FS_NO_RANK;
  std::uint32_t read_threads = 8;
  std::uint32_t write_threads = 8;
  std::uint32_t direct_io = KVR_DIRECT_IO_AUTO;
  std::uint32_t durability = KVR_FS_DURABILITY_NONE;
  bool verify = true;
  std::uint64_t capacity_bytes = 0;  // 0: unbounded
  std::uint32_t write_mode = KVR_FS_WRITE_AUTO;  // KVR_FS_WRITE_*
};

/// A content-addressed block store on a directory (kvr_fs_open / kvr_fs_close). load() throws
/// KVR_ERR_CORRUPT for a bad file (which it removed); batches run on the read and write
/// threads; lookup() answers known keys from memory, others cost one stat each.
class FsStore : public detail::BlockTier<detail::FsCalls> {
 public:
  explicit FsStore(const FsOptions& o) {
    kvr_fs_config c;
    check(kvr_fs_config_default(&c));
    c.root = o.root.c_str();
    c.namespace_name = o.ns.empty() && o.manifest ? nullptr : o.ns.c_str();
    kvr_namespace_config fields;
    if (o.manifest) {
      fields = o.manifest->to_c();
      c.namespace_config = &fields;
    }
    c.rank = o.rank;
    c.read_threads = o.read_threads;
    c.write_threads = o.write_threads;
    c.direct_io = o.direct_io;
    c.durability = o.durability;
    c.verify = o.verify;
    c.capacity_bytes = o.capacity_bytes;
    c.write_mode = o.write_mode;
    kvr_fs* f = nullptr;
    check(kvr_fs_open(&c, &f));
    h_.reset(f);
  }
  /// The path of the block's file (existing or not).
  [[nodiscard]] std::string block_path(const BlockKey& k) const {
    std::size_t need = 0;
    kvr_status s = kvr_fs_block_path(h_.get(), &k, nullptr, 0, &need);
    if (s != KVR_ERR_TOO_SMALL) check(s);
    std::string p(need, '\0');
    check(kvr_fs_block_path(h_.get(), &k, &p[0], p.size(), &need));
    p.resize(need - 1);
    return p;
  }
};

// ---- S3 object tier: one object per block, shared between hosts ----

struct ObjOptions {
  std::string url;  // s3://bucket[/prefix], required
  std::string ns;   // namespace (model + layout digest), required
  // Empty strings take the AWS_* environment variables (AWS_ENDPOINT_URL, AWS_REGION,
  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); no credentials: unsigned.
  std::string endpoint;  // http://host:port or https://host:port
  std::string region;
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;
  std::uint32_t concurrency = 32;  // requests in flight
  std::uint32_t connect_timeout_ms = 2000;
  std::uint32_t request_timeout_ms = 30000;
  // PEM certificates an https endpoint's chain may end in, trusted besides the public
  // roots (a private CA, a self-signed server); empty: AWS_CA_BUNDLE.
  std::string ca_bundle;
};

/// Blocks in an S3 bucket (kvr_obj_open / kvr_obj_close). A server that is down, too slow or
/// refusing throws kvr::Error with KVR_ERR_UNAVAILABLE (message: endpoint and error); the
/// same object works again once the server is back. load() answers false also for a bad
/// object (counted in stats().corrupt, left for `kvr obj verify --repair`) and, for a whole
/// key, for an object of its name that holds another key; batches and lookup() keep
/// `concurrency` requests in flight (lookup: one HEAD per key).
class ObjStore : public detail::BlockTier<detail::ObjCalls> {
 public:
  explicit ObjStore(const ObjOptions& o) {
    kvr_obj_config c;
    check(kvr_obj_config_default(&c));
    auto opt = [](const std::string& s) { return s.empty() ? nullptr : s.c_str(); };
    c.url = o.url.c_str();
    c.namespace_name = o.ns.c_str();
    c.endpoint = opt(o.endpoint);
    c.region = opt(o.region);
    c.access_key_id = opt(o.access_key_id);
    c.secret_access_key = opt(o.secret_access_key);
    c.session_token = opt(o.session_token);
    c.concurrency = o.concurrency;
    c.connect_timeout_ms = o.connect_timeout_ms;
    c.request_timeout_ms = o.request_timeout_ms;
    c.ca_bundle = opt(o.ca_bundle);
    kvr_obj* h = nullptr;
    check(kvr_obj_open(&c, &h));
    h_.reset(h);
  }
};

// ---- tensor files (safetensors): writing, lazy reading, lazy directory, region blocks ----

/// Writes `n` tensors (strided views allowed) and `m` metadata entries as a safetensors file,
/// atomically (kvr_tensors_write). `flags`: KVR_TENSORS_ALIGN_4K, KVR_TENSORS_NO_SYNC.
/// `path` may be a URL: file:///abs/path, or s3://bucket/key (S3 settings from the AWS_*
/// environment variables; the object appears only once completely uploaded).
inline void write_tensors(const std::string& path, const kvr_tensor* tensors, std::size_t n,
                          const kvr_kv* metadata = nullptr, std::size_t m = 0,
                          std::uint32_t flags = 0) {
  check(kvr_tensors_write(path.c_str(), tensors, n, metadata, m, flags));
}

/// The S3 settings of a tensor file URL: `s3`'s endpoint, region, credentials, concurrency
/// and timeouts (its `url` and `ns` are not used; empty strings take the AWS_* variables).
/// The pointers in the result point into `s3`, which must outlive its use.
inline kvr_obj_config tensor_url_config(const ObjOptions& s3) {
  kvr_obj_config c;
  check(kvr_obj_config_default(&c));
  auto opt = [](const std::string& s) { return s.empty() ? nullptr : s.c_str(); };
  c.endpoint = opt(s3.endpoint);
  c.region = opt(s3.region);
  c.access_key_id = opt(s3.access_key_id);
  c.secret_access_key = opt(s3.secret_access_key);
  c.session_token = opt(s3.session_token);
  c.concurrency = s3.concurrency;
  c.connect_timeout_ms = s3.connect_timeout_ms;
  c.request_timeout_ms = s3.request_timeout_ms;
  return c;
}
/// The result would point into a temporary: name the options first.
kvr_obj_config tensor_url_config(ObjOptions&& s3) = delete;

/// write_tensors to a path or URL with explicit S3 settings (kvr_tensors_write_url).
inline void write_tensors(const std::string& url, const ObjOptions& s3, const kvr_tensor* tensors,
                          std::size_t n, const kvr_kv* metadata = nullptr, std::size_t m = 0,
                          std::uint32_t flags = 0) {
  kvr_obj_config c = tensor_url_config(s3);
  check(kvr_tensors_write_url(url.c_str(), &c, tensors, n, metadata, m, flags));
}

/// An open tensor file (kvr_tensors_open / kvr_tensors_close): header parsed, data mapped
/// read-only; views returned by tensor() stay valid while this object lives.
/// `path` may be a URL: file:///abs/path (the local file, mapped) or s3://bucket/key (the
/// header fetched with ranged GETs; read_into fetches one tensor's range; tensor() fetches a
/// tensor once into memory owned by this object).
class TensorFile {
 public:
  explicit TensorFile(const std::string& path) {
    kvr_tensor_file* f = nullptr;
    check(kvr_tensors_open(path.c_str(), &f));
    h_.reset(f);
  }
  /// Opens a path or URL with explicit S3 settings (kvr_tensors_open_url).
  TensorFile(const std::string& url, const ObjOptions& s3) {
    kvr_obj_config c = tensor_url_config(s3);
    kvr_tensor_file* f = nullptr;
    check(kvr_tensors_open_url(url.c_str(), &c, &f));
    h_.reset(f);
  }
  TensorFile(const TensorFile&) = delete;
  TensorFile& operator=(const TensorFile&) = delete;
  TensorFile(TensorFile&&) noexcept = default;
  TensorFile& operator=(TensorFile&&) noexcept = default;
  ~TensorFile() noexcept = default;
  [[nodiscard]] std::size_t size() const {
    std::size_t n = 0;
    check(kvr_tensors_count(h_.get(), &n));
    return n;
  }
  [[nodiscard]] std::string name_at(std::size_t i) const {
    const char* s = nullptr;
    check(kvr_tensors_name_at(h_.get(), i, &s));
    return s;
  }
  [[nodiscard]] std::string metadata(const std::string& key) const {
    const char* s = nullptr;
    check(kvr_tensors_metadata_get(h_.get(), key.c_str(), &s));
    return s;
  }
  /// Zero-copy view; `name == nullptr` only for a file holding exactly one tensor.
  [[nodiscard]] kvr_tensor_ref tensor(const char* name = nullptr) const {
    kvr_tensor_ref r{};
    check(kvr_tensors_get(h_.get(), name, &r));
    return r;
  }
  [[nodiscard]] kvr_tensor_ref tensor(const std::string& name) const {
    return tensor(name.c_str());
  }
  /// Copies one tensor into `dst`; returns the bytes copied.
  std::size_t read_into(const char* name, void* dst, std::size_t cap) const {
    std::size_t n = 0;
    check(kvr_tensors_read_into(h_.get(), name, dst, cap, &n));
    return n;
  }
  /// Same, bypassing the page cache with O_DIRECT (for files read once).
  std::size_t read_into_direct(const char* name, void* dst, std::size_t cap) const {
    std::size_t n = 0;
    check(kvr_tensors_read_into_direct(h_.get(), name, dst, cap, &n));
    return n;
  }
  /// Copies one tensor into device memory (throws KVR_ERR_CUDA_UNAVAILABLE without CUDA).
  std::size_t read_into_device(const char* name, std::uint64_t dst, std::size_t cap,
                               int device = 0) const {
    std::size_t n = 0;
    check(kvr_tensors_read_into_device(h_.get(), name, dst, cap, device, &n));
    return n;
  }
  [[nodiscard]] kvr_tensor_file* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_tensor_file, kvr_tensors_close> h_;
};

/// A lazy reference to one tensor of a TensorDir item; keeps the directory alive.
class LazyTensor {
 public:
  explicit LazyTensor(kvr_tensor_lazy* l) noexcept : h_(l) {}
  LazyTensor(const LazyTensor&) = delete;
  LazyTensor& operator=(const LazyTensor&) = delete;
  LazyTensor(LazyTensor&&) noexcept = default;
  LazyTensor& operator=(LazyTensor&&) noexcept = default;
  ~LazyTensor() noexcept = default;
  /// Loads the tensor into `dst`; returns the bytes copied (KVR_ERR_CLOSED after cleanup).
  std::size_t materialize(void* dst, std::size_t cap) const {
    std::size_t n = 0;
    check(kvr_tensor_lazy_materialize(h_.get(), dst, cap, &n));
    return n;
  }
  /// Zero-copy mapped view, valid while this reference lives.
  [[nodiscard]] kvr_tensor_ref view() const {
    kvr_tensor_ref r{};
    check(kvr_tensor_lazy_view(h_.get(), &r));
    return r;
  }
  [[nodiscard]] kvr_tensor_lazy* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_tensor_lazy, kvr_tensor_lazy_free> h_;
};

/// One entry of TensorDir::adopt: item `item_id` is tensor `tensor` of the safetensors file
/// at `location` (std::nullopt: the whole file, its tensors chosen by name at get_ref).
struct AdoptItem {
  std::string item_id;
  std::string location;
  std::optional<std::string> tensor;
};

/// A lazy tensor directory (kvr_tensor_dir_open / kvr_tensor_dir_close): a fresh private
/// directory, deleted when this handle and every LazyTensor are gone, or by cleanup().
/// A dictionary of items: size(), contains(), find(), remove(), adopt(), and range-for over
/// the item ids in insertion order (each loop walks one snapshot: puts and removals by other
/// threads meanwhile do not disturb it).
class TensorDir {
 public:
  /// Forward iterator over one snapshot of the item ids (ids() at begin()).
  class iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = std::string;
    using difference_type = std::ptrdiff_t;
    using pointer = const std::string*;
    using reference = const std::string&;
    iterator() = default;
    reference operator*() const { return (*ids_)[i_]; }
    pointer operator->() const { return &(*ids_)[i_]; }
    iterator& operator++() {
      ++i_;
      return *this;
    }
    iterator operator++(int) {
      iterator old = *this;
      ++i_;
      return old;
    }
    /// Any two iterators at the end are equal (end() has no snapshot).
    friend bool operator==(const iterator& a, const iterator& b) noexcept {
      if (a.at_end() || b.at_end()) return a.at_end() && b.at_end();
      return a.ids_ == b.ids_ && a.i_ == b.i_;
    }
    friend bool operator!=(const iterator& a, const iterator& b) noexcept { return !(a == b); }

   private:
    friend class TensorDir;
    explicit iterator(std::shared_ptr<const std::vector<std::string>> ids) noexcept
        : ids_(std::move(ids)) {}
    [[nodiscard]] bool at_end() const noexcept { return !ids_ || i_ >= ids_->size(); }
    std::shared_ptr<const std::vector<std::string>> ids_;
    std::size_t i_ = 0;
  };

  /// `parent` empty: the system temp directory.
  explicit TensorDir(const std::string& parent = "") {
    kvr_tensor_dir* d = nullptr;
    check(kvr_tensor_dir_open(parent.empty() ? nullptr : parent.c_str(), &d));
    h_.reset(d);
  }
  TensorDir(const TensorDir&) = delete;
  TensorDir& operator=(const TensorDir&) = delete;
  TensorDir(TensorDir&&) noexcept = default;
  TensorDir& operator=(TensorDir&&) noexcept = default;
  ~TensorDir() noexcept = default;
  /// Writes item `item_id` (replacing one of that id, which keeps its place in the order).
  void put(const std::string& item_id, const kvr_tensor* tensors, std::size_t n,
           const kvr_kv* metadata = nullptr, std::size_t m = 0, std::uint32_t flags = 0) {
    check(kvr_tensor_dir_put(h_.get(), item_id.c_str(), tensors, n, metadata, m, flags));
  }
  /// `name == nullptr`: the item's only tensor. Throws KVR_ERR_NOT_FOUND for a missing item.
  [[nodiscard]] LazyTensor get_ref(const std::string& item_id, const char* name = nullptr) const {
    kvr_tensor_lazy* l = nullptr;
    check(kvr_tensor_dir_get_ref(h_.get(), item_id.c_str(), name, &l));
    return LazyTensor(l);
  }
  /// A lazy reference, or std::nullopt for a missing item (a miss does not throw; a broken
  /// file throws at materialize, KVR_ERR_CLOSED after cleanup throws here).
  [[nodiscard]] std::optional<LazyTensor> find(const std::string& item_id,
                                               const char* name = nullptr) const {
    bool found = false;
    kvr_tensor_lazy* l = nullptr;
    check(kvr_tensor_dir_find(h_.get(), item_id.c_str(), name, &found, &l));
    if (!found) return std::nullopt;
    return LazyTensor(l);
  }
  /// Number of items (0 after cleanup).
  [[nodiscard]] std::size_t size() const {
    std::size_t n = 0;
    check(kvr_tensor_dir_count(h_.get(), &n));
    return n;
  }
  [[nodiscard]] bool empty() const { return size() == 0; }
  [[nodiscard]] bool contains(const std::string& item_id) const {
    bool yes = false;
    check(kvr_tensor_dir_contains(h_.get(), item_id.c_str(), &yes));
    return yes;
  }
  /// Removes an item; false if there was none. Its LazyTensors keep working until released;
  /// the last one deletes the item's own file (an adopted file is never deleted).
  bool remove(const std::string& item_id) {
    bool removed = false;
    check(kvr_tensor_dir_remove(h_.get(), item_id.c_str(), &removed));
    return removed;
  }
  /// Adopts existing files (or single tensors of them) as items, all or nothing: every file
  /// and tensor is validated first. The files stay the caller's: never deleted by kvr.
  void adopt(const std::vector<AdoptItem>& items) {
    std::vector<kvr_tensor_dir_adopt_item> c(items.size());
    for (std::size_t i = 0; i < items.size(); i++) {
      c[i].struct_size = sizeof(kvr_tensor_dir_adopt_item);
      c[i].item_id = items[i].item_id.c_str();
      c[i].location = items[i].location.c_str();
      c[i].tensor_name = items[i].tensor ? items[i].tensor->c_str() : nullptr;
    }
    check(kvr_tensor_dir_adopt(h_.get(), c.data(), c.size()));
  }
  /// Adopts one item: tensor `tensor` of the file at `location` (nullptr: the whole file).
  void adopt(const std::string& item_id, const std::string& location,
             const char* tensor = nullptr) {
    kvr_tensor_dir_adopt_item c{sizeof(kvr_tensor_dir_adopt_item), item_id.c_str(),
                                location.c_str(), tensor};
    check(kvr_tensor_dir_adopt(h_.get(), &c, 1));
  }
  /// The item ids in insertion order, as one snapshot.
  [[nodiscard]] std::vector<std::string> ids() const {
    kvr_tensor_dir_ids* raw = nullptr;
    check(kvr_tensor_dir_snapshot_ids(h_.get(), &raw));
    Handle<kvr_tensor_dir_ids, kvr_tensor_dir_ids_free> snap(raw);
    std::size_t n = 0;
    check(kvr_tensor_dir_ids_count(snap.get(), &n));
    std::vector<std::string> out;
    out.reserve(n);
    std::string buf(64, '\0');
    for (std::size_t i = 0; i < n; i++) {
      std::size_t need = 0;
      kvr_status s = kvr_tensor_dir_ids_at(snap.get(), i, &buf[0], buf.size(), &need);
      if (s == KVR_ERR_TOO_SMALL) {
        buf.resize(need);
        s = kvr_tensor_dir_ids_at(snap.get(), i, &buf[0], buf.size(), &need);
      }
      check(s);
      out.emplace_back(buf.data(), need - 1);
    }
    return out;
  }
  /// Walks a snapshot of the ids taken now.
  [[nodiscard]] iterator begin() const {
    return iterator(std::make_shared<const std::vector<std::string>>(ids()));
  }
  [[nodiscard]] iterator end() const noexcept { return iterator(); }
  void cleanup() { check(kvr_tensor_dir_cleanup(h_.get())); }
  [[nodiscard]] std::string path() const {
    const char* p = nullptr;
    check(kvr_tensor_dir_path(h_.get(), &p));
    return p;
  }
  [[nodiscard]] kvr_tensor_dir* get() const noexcept { return h_.get(); }

 private:
  Handle<kvr_tensor_dir, kvr_tensor_dir_close> h_;
};

/// Writes blocks of a region (rows, or this rank's slices) as a tensor file.
inline void export_blocks(const Region& r, const std::uint64_t* ids, std::size_t n,
                          const std::string& path, std::uint32_t flags = 0) {
  check(kvr_region_export(r.get(), ids, n, path.c_str(), flags));
}

/// Loads a kvr_region_export file into a region of the same layout; returns blocks loaded.
inline std::size_t import_blocks(const Region& r, const std::string& path) {
  std::size_t n = 0;
  check(kvr_region_import(r.get(), path.c_str(), &n));
  return n;
}

// One owner per handle, and nothing an owner does on the way out may throw.
#define KVR_ASSERT_MOVE_ONLY(T)                                                         \
  static_assert(!std::is_copy_constructible_v<T> && !std::is_copy_assignable_v<T> &&      \
                    std::is_nothrow_move_constructible_v<T> &&                            \
                    std::is_nothrow_move_assignable_v<T> && std::is_nothrow_destructible_v<T>, \
                #T " must be move-only with noexcept moves and destructor")
KVR_ASSERT_MOVE_ONLY(Region);
KVR_ASSERT_MOVE_ONLY(Job);
KVR_ASSERT_MOVE_ONLY(Disk);
KVR_ASSERT_MOVE_ONLY(FsStore);
KVR_ASSERT_MOVE_ONLY(ObjStore);
KVR_ASSERT_MOVE_ONLY(TensorFile);
KVR_ASSERT_MOVE_ONLY(LazyTensor);
KVR_ASSERT_MOVE_ONLY(TensorDir);
#undef KVR_ASSERT_MOVE_ONLY

}  // namespace kvr

#endif  // KVR_HPP
