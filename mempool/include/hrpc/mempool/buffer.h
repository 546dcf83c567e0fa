// Buffer: a refcounted handle to one pool block, or to a slice of one.
//
// Copying a Buffer shares the block (one relaxed atomic increment); moving
// steals the handle. The block's reference count lives out of band in the
// pool's per-block metadata, never in the payload, so page-class blocks stay
// page-aligned and contain only payload. When the last handle drops — on any
// thread — the block goes back to the pool: into the releasing thread's cache
// for that pool, and from there in batches to the pool's shared free list.
//
// Lifetime: a Buffer must not outlive the Pool it came from. A Buffer object is
// not itself thread-safe (like std::shared_ptr: distinct handles to the same
// block may be used and dropped on different threads concurrently).
#pragma once

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "hrpc/mempool/registrar.h"

namespace hrpc::mempool {

class Pool;

namespace detail {
class PoolCore;

// Out-of-band metadata of one block. Owned by the pool; never moves.
struct BlockMeta {
  std::atomic<uint32_t> refs{0};
  uint8_t size_class = 0;
  uint8_t arena = 0;
  PoolCore* pool = nullptr;
  char* data = nullptr;  // first byte of the block
};

// Returns a block whose reference count reached zero to its pool.
void FreeBlock(BlockMeta* meta) noexcept;
RegionKey BlockKey(const BlockMeta* meta, RegistrarSlot slot) noexcept;
int BlockNumaNode(const BlockMeta* meta) noexcept;
size_t BlockBytes(const BlockMeta* meta) noexcept;
}  // namespace detail

class Buffer {
 public:
  Buffer() noexcept = default;
  Buffer(const Buffer& o) noexcept : meta_(o.meta_), data_(o.data_), size_(o.size_) {
    if (meta_ != nullptr) meta_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  Buffer(Buffer&& o) noexcept
      : meta_(std::exchange(o.meta_, nullptr)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  Buffer& operator=(const Buffer& o) noexcept {
    if (this != &o) {
      Buffer copy(o);
      *this = std::move(copy);
    }
    return *this;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      Release();
      meta_ = std::exchange(o.meta_, nullptr);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~Buffer() { Release(); }

  char* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  explicit operator bool() const noexcept { return meta_ != nullptr; }

  // A handle to bytes [offset, offset+len) of this slice, sharing the block.
  // offset + len > size() is a bug (asserted).
  Buffer Slice(size_t offset, size_t len) const& noexcept {
    assert(offset <= size_ && len <= size_ - offset);
    Buffer out(*this);
    out.data_ += offset;
    out.size_ = len;
    return out;
  }
  // Same, taking over this handle's reference (no refcount traffic).
  Buffer Slice(size_t offset, size_t len) && noexcept {
    assert(offset <= size_ && len <= size_ - offset);
    Buffer out(std::move(*this));
    out.data_ += offset;
    out.size_ = len;
    return out;
  }

  // Keys of the arena holding this block for an attached registrar (O(1)).
  // An empty Buffer or a slot with no registrar attached gives a zero key.
  RegionKey key(RegistrarSlot slot) const noexcept {
    return meta_ != nullptr ? detail::BlockKey(meta_, slot) : RegionKey{};
  }
  // NUMA node of the pool the block came from (-1: unbound).
  int numa_node() const noexcept { return meta_ != nullptr ? detail::BlockNumaNode(meta_) : -1; }
  // Bytes of the whole underlying block (its size class); 0 when empty.
  size_t block_bytes() const noexcept { return meta_ != nullptr ? detail::BlockBytes(meta_) : 0; }
  // Handles sharing the block (0 when empty). Racy by nature; for tests and asserts.
  size_t use_count() const noexcept {
    return meta_ != nullptr ? meta_->refs.load(std::memory_order_relaxed) : 0;
  }
  // Drops this handle (the block goes home if it was the last one).
  void Reset() noexcept {
    Release();
    data_ = nullptr;
    size_ = 0;
  }

 private:
  friend class Pool;
  Buffer(detail::BlockMeta* meta, char* data, size_t size) noexcept
      : meta_(meta), data_(data), size_(size) {}

  void Release() noexcept {
    detail::BlockMeta* m = std::exchange(meta_, nullptr);
    if (m == nullptr) return;
    // Sole owner: nobody else can add a reference, so skip the atomic RMW.
    if (m->refs.load(std::memory_order_acquire) == 1 ||
        m->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      detail::FreeBlock(m);
    }
  }

  detail::BlockMeta* meta_ = nullptr;
  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace hrpc::mempool
