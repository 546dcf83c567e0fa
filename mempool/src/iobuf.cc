#include "hrpc/mempool/iobuf.h"

#include <algorithm>
#include <cassert>

#include "hrpc/base/crc32c.h"
#include "hrpc/mempool/copy.h"
#include "hrpc/mempool/pool.h"

namespace hrpc::mempool {

void IoBuf::SliceVec::Grow() {
  const uint32_t cap = std::max<uint32_t>(2 * kInline, 2 * capacity());
  auto* fresh = static_cast<Buffer*>(::operator new(cap * sizeof(Buffer)));
  Buffer* old = data();
  for (uint32_t i = 0; i < n_; ++i) {
    new (fresh + i) Buffer(std::move(old[i]));
    old[i].~Buffer();
  }
  FreeHeap();
  heap_ = fresh;
  cap_ = cap;
}

void IoBuf::SliceVec::DestroyAll() noexcept {
  Destroy(0);
  FreeHeap();
}

void IoBuf::SliceVec::MoveInlineFrom(SliceVec& o) noexcept {
  Buffer* d = data();
  for (uint32_t i = 0; i < o.n_; ++i) {
    new (d + i) Buffer(std::move(o.in_.b[i]));
    o.in_.b[i].~Buffer();
  }
}

void IoBuf::SliceVec::PushFront(Buffer b) {
  if (n_ == capacity()) Grow();
  Buffer* d = data();
  for (uint32_t i = n_; i > 0; --i) {
    new (d + i) Buffer(std::move(d[i - 1]));
    d[i - 1].~Buffer();
  }
  new (d) Buffer(std::move(b));
  ++n_;
}

void IoBuf::SliceVec::EraseFront(size_t k) {
  const auto drop = static_cast<uint32_t>(std::min<size_t>(k, n_));
  if (drop == 0) return;
  Buffer* d = data();
  for (uint32_t i = 0; i < drop; ++i) d[i].~Buffer();
  for (uint32_t i = drop; i < n_; ++i) {
    new (d + i - drop) Buffer(std::move(d[i]));
    d[i].~Buffer();
  }
  n_ -= drop;
}

void IoBuf::SliceVec::Truncate(size_t k) {
  if (k < n_) Destroy(static_cast<uint32_t>(k));
}

void IoBuf::Append(Buffer b) {
  if (b.empty()) return;
  size_ += b.size();
  slices_.PushBack(std::move(b));
}

void IoBuf::Append(IoBuf&& other) {
  if (&other == this) return;
  for (Buffer& b : other.slices_) slices_.PushBack(std::move(b));
  size_ += other.size_;
  other.slices_.Clear();
  other.size_ = 0;
}

void IoBuf::Prepend(Buffer b) {
  if (b.empty()) return;
  size_ += b.size();
  slices_.PushFront(std::move(b));
}

IoBuf IoBuf::CutFront(size_t n) {
  assert(n <= size_);
  n = std::min(n, size_);
  IoBuf out;
  size_t whole = 0;  // slices moved entirely
  while (whole < slices_.size() && slices_[whole].size() <= n - out.size_) {
    out.size_ += slices_[whole].size();
    out.slices_.PushBack(std::move(slices_[whole]));
    ++whole;
  }
  slices_.EraseFront(whole);
  const size_t rest = n - out.size_;
  if (rest > 0) {
    Buffer& first = slices_[0];
    out.Append(first.Slice(0, rest));
    first = first.Slice(rest, first.size() - rest);
  }
  size_ -= n;
  return out;
}

IoBuf IoBuf::CutBack(size_t n) {
  assert(n <= size_);
  n = std::min(n, size_);
  // Walk back to find the split point, then move the tail over in order.
  size_t keep = slices_.size(), tail_bytes = 0;
  while (keep > 0 && tail_bytes + slices_[keep - 1].size() <= n) {
    tail_bytes += slices_[keep - 1].size();
    --keep;
  }
  IoBuf out;
  const size_t rest = n - tail_bytes;
  if (rest > 0) {
    Buffer& last = slices_[keep - 1];
    out.Append(last.Slice(last.size() - rest, rest));
    last = last.Slice(0, last.size() - rest);
  }
  for (size_t i = keep; i < slices_.size(); ++i) out.Append(std::move(slices_[i]));
  slices_.Truncate(keep);
  size_ -= n;
  return out;
}

void IoBuf::TrimFront(size_t n) { (void)CutFront(n); }
void IoBuf::TrimBack(size_t n) { (void)CutBack(n); }

IoBuf IoBuf::Share() const {
  IoBuf out;
  for (const Buffer& b : slices_) out.slices_.PushBack(b);  // copies bump refcounts
  out.size_ = size_;
  return out;
}

size_t IoBuf::FillIovecs(std::span<iovec> out) const {
  const size_t n = std::min(out.size(), slices_.size());
  for (size_t i = 0; i < n; ++i) out[i] = iovec{slices_[i].data(), slices_[i].size()};
  return n;
}

std::vector<iovec> IoBuf::Iovecs() const {
  std::vector<iovec> v(slices_.size());
  FillIovecs(v);
  return v;
}

size_t IoBuf::FillSges(RegistrarSlot slot, std::span<Sge> out) const {
  const size_t n = std::min(out.size(), slices_.size());
  for (size_t i = 0; i < n; ++i) {
    const Buffer& b = slices_[i];
    out[i] = Sge{reinterpret_cast<uint64_t>(b.data()), static_cast<uint32_t>(b.size()),
                 b.key(slot).lkey};
  }
  return n;
}

void IoBuf::CopyTo(void* dst, size_t offset, size_t n) const {
  assert(offset <= size_ && n <= size_ - offset);
  auto* d = static_cast<char*>(dst);
  for (const Buffer& b : slices_) {
    if (n == 0) break;
    if (offset >= b.size()) {
      offset -= b.size();
      continue;
    }
    const size_t take = std::min(n, b.size() - offset);
    CountedCopy(d, b.data() + offset, take);
    d += take;
    n -= take;
    offset = 0;
  }
}

Result<IoBuf> IoBuf::CopyFrom(Pool& pool, const void* src, size_t n) {
  IoBuf out;
  const auto* s = static_cast<const char*>(src);
  const size_t max_block = pool.options().max_class_bytes;
  while (n > 0) {
    const size_t take = std::min(n, max_block);
    HRPC_ASSIGN_OR_RETURN(Buffer b, pool.Allocate(take));
    CountedCopy(b.data(), s, take);
    out.Append(std::move(b));
    s += take;
    n -= take;
  }
  return out;
}

uint32_t IoBuf::Crc32c() const {
  uint32_t crc = 0;
  for (const Buffer& b : slices_) crc = hrpc::Crc32c(b.data(), b.size(), crc);
  return crc;
}

}  // namespace hrpc::mempool
