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
#include <new>
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
  // then all of them in one heap array. Only the live slices are constructed,
  // so moving or destroying a short chain touches just those (this runs
  // several times per message on the control path).
  class SliceVec {
   public:
    static constexpr uint32_t kInline = 4;
    SliceVec() noexcept {}
    SliceVec(SliceVec&& o) noexcept { Take(o); }
    SliceVec& operator=(SliceVec&& o) noexcept {
      if (this != &o) {
        Clear();
        if (o.heap_ != nullptr) FreeHeap();
        Take(o);
      }
      return *this;
    }
    ~SliceVec() {
      if (n_ != 0 || heap_ != nullptr) DestroyAll();  // most IoBufs die moved-from
    }
    size_t size() const noexcept { return n_; }
    bool empty() const noexcept { return n_ == 0; }
    Buffer* data() noexcept { return heap_ != nullptr ? heap_ : in_.b; }
    const Buffer* data() const noexcept { return heap_ != nullptr ? heap_ : in_.b; }
    Buffer& operator[](size_t i) noexcept { return data()[i]; }
    const Buffer& operator[](size_t i) const noexcept { return data()[i]; }
    Buffer* begin() noexcept { return data(); }
    Buffer* end() noexcept { return data() + n_; }
    const Buffer* begin() const noexcept { return data(); }
    const Buffer* end() const noexcept { return data() + n_; }
    void PushBack(Buffer&& b) {
      if (n_ == capacity()) Grow();
      new (data() + n_) Buffer(std::move(b));
      ++n_;
    }
    void PushBack(const Buffer& b) {
      if (n_ == capacity()) Grow();
      new (data() + n_) Buffer(b);
      ++n_;
    }
    void PushFront(Buffer b);
    void EraseFront(size_t k);  // drop the first k
    void Truncate(size_t k);    // keep the first k
    void Clear() noexcept { Destroy(0); }  // keeps a heap array for reuse

   private:
    uint32_t capacity() const noexcept { return heap_ != nullptr ? cap_ : kInline; }
    // Destroys slices [from, n_).
    void Destroy(uint32_t from) noexcept {
      Buffer* d = data();
      for (uint32_t i = from; i < n_; ++i) d[i].~Buffer();
      n_ = from;
    }
    void FreeHeap() noexcept {
      if (heap_ == nullptr) return;
      ::operator delete(heap_);
      heap_ = nullptr;
      cap_ = 0;
    }
    // Requires: no live slices here and no heap array unless o has none.
    // GCC 12 cannot always see that a default-constructed source has n_ == 0
    // and warns that the inline slice it would move "may be used
    // uninitialized" (the union is left unconstructed on purpose); the branch
    // only runs for a live slice.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
    void Take(SliceVec& o) noexcept {
      if (o.heap_ != nullptr) {
        heap_ = std::exchange(o.heap_, nullptr);
        cap_ = std::exchange(o.cap_, 0);
      } else if (o.n_ == 1) {  // the usual control message: one slice
        new (data()) Buffer(std::move(o.in_.b[0]));
        o.in_.b[0].~Buffer();
      } else if (o.n_ > 1) {
        MoveInlineFrom(o);
      }
      n_ = std::exchange(o.n_, 0);
    }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
    void Grow();
    void DestroyAll() noexcept;
    void MoveInlineFrom(SliceVec& o) noexcept;  // o's inline slices to data()

    union Inline {
      Inline() noexcept {}
      ~Inline() {}
      Buffer b[kInline];
    } in_;
    Buffer* heap_ = nullptr;  // null: the slices are in in_
    uint32_t n_ = 0;
    uint32_t cap_ = 0;  // of heap_
  };

  SliceVec slices_;
  size_t size_ = 0;
};

}  // namespace hrpc::mempool
