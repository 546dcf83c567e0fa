// IoBuf: a chain of Buffer slices — the scatter/gather form of a payload.
//
// Append, prepend, cut at either end, split and share move or re-slice Buffer
// handles (refcounts), never payload bytes: data() of every byte stays where
// the pool put it. The only methods that copy payload are CopyTo and CopyFrom,
// and they do it through CountedCopy (copy.h). An IoBuf object is not
// thread-safe; Share() gives another thread its own handles to the same bytes.
// Like Buffer, an IoBuf must not outlive the pools its slices came from.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "hrpc/base/status.h"
#include "hrpc/mempool/buffer.h"
#include "hrpc/mempool/registrar.h"

namespace hrpc::mempool {

class Pool;

// Layout-compatible with struct ibv_sge.
struct Sge {
  uint64_t addr;
  uint32_t length;
  uint32_t lkey;
};
static_assert(sizeof(Sge) == 16);

class IoBuf {
 public:
  IoBuf() = default;
  explicit IoBuf(Buffer b) { Append(std::move(b)); }
  // A moved-from IoBuf is empty.
  IoBuf(IoBuf&& o) noexcept : slices_(std::move(o.slices_)), size_(std::exchange(o.size_, 0)) {}
  IoBuf& operator=(IoBuf&& o) noexcept {
    slices_ = std::move(o.slices_);
    size_ = std::exchange(o.size_, 0);
    return *this;
  }
  // Copying would silently share; say Share() instead.
  IoBuf(const IoBuf&) = delete;
  IoBuf& operator=(const IoBuf&) = delete;

  // Empty Buffers are dropped, so every slice has size() > 0.
  void Append(Buffer b);
  void Append(IoBuf&& other);
  void Prepend(Buffer b);

  // Remove and return the first / last n bytes (slices split as needed).
  // n > size() is a bug (asserted); in release builds n is clamped.
  IoBuf CutFront(size_t n);
  IoBuf CutBack(size_t n);
  void TrimFront(size_t n);
  void TrimBack(size_t n);

  IoBuf Share() const;  // same bytes, refcounts bumped

  size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  size_t num_slices() const noexcept { return slices_.size(); }
  const Buffer& slice(size_t i) const noexcept { return slices_.data()[i]; }

  // Writes min(num_slices(), out.size()) entries; returns how many.
  size_t FillIovecs(std::span<iovec> out) const;
  std::vector<iovec> Iovecs() const;
  // Same, as RDMA SGEs carrying each slice's lkey for the registrar in `slot`.
  size_t FillSges(RegistrarSlot slot, std::span<Sge> out) const;

  // Copies bytes [offset, offset+n) to dst through CountedCopy. Out of range
  // is a bug (asserted).
  void CopyTo(void* dst, size_t offset, size_t n) const;
  // A new IoBuf holding a copy of [src, src+n), in blocks of at most the pool's
  // largest class. For non-payload or unaligned user data.
  static Result<IoBuf> CopyFrom(Pool& pool, const void* src, size_t n);

  uint32_t Crc32c() const;

 private:
  // Slices: up to kInline in place (no heap allocation for short chains),
  // then all of them in a vector.
  class SliceVec {
   public:
    static constexpr size_t kInline = 4;
    SliceVec() = default;
    SliceVec(SliceVec&& o) noexcept { *this = std::move(o); }
    // Invariant: inline_[i] is empty for i >= n_, and all of inline_ is empty
    // once spilled — so a move touches only the live slices (this runs several
    // times per message on the control path).
    SliceVec& operator=(SliceVec&& o) noexcept {
      if (this != &o) {
        Clear();
        if (o.spilled_) {
          heap_.swap(o.heap_);  // o keeps our (cleared) capacity
          spilled_ = true;
          o.spilled_ = false;
          o.heap_.clear();
        } else {
          for (size_t i = 0; i < o.n_; ++i) inline_[i] = std::move(o.inline_[i]);
        }
        n_ = std::exchange(o.n_, 0);
      }
      return *this;
    }
    size_t size() const noexcept { return n_; }
    bool empty() const noexcept { return n_ == 0; }
    Buffer* data() noexcept { return spilled_ ? heap_.data() : inline_; }
    const Buffer* data() const noexcept { return spilled_ ? heap_.data() : inline_; }
    Buffer& operator[](size_t i) noexcept { return data()[i]; }
    const Buffer& operator[](size_t i) const noexcept { return data()[i]; }
    Buffer* begin() noexcept { return data(); }
    Buffer* end() noexcept { return data() + n_; }
    const Buffer* begin() const noexcept { return data(); }
    const Buffer* end() const noexcept { return data() + n_; }
    void PushBack(Buffer b);
    void PushFront(Buffer b);
    void EraseFront(size_t k);  // drop the first k
    void Truncate(size_t k);    // keep the first k
    void Clear() noexcept;

   private:
    void Spill();
    Buffer inline_[kInline];
    std::vector<Buffer> heap_;
    size_t n_ = 0;
    bool spilled_ = false;
  };

  SliceVec slices_;
  size_t size_ = 0;
};

}  // namespace hrpc::mempool
