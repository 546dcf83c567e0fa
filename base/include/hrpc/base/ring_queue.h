// RingQueue<T>: a FIFO queue in one ring of slots that grows by doubling and
// never shrinks.
//
// A connection's send queue fills and drains at the message rate and rarely
// holds more than a few frames. std::deque frees a block as it drains past it
// and allocates one as it refills (every two elements for elements of a few
// hundred bytes); this ring allocates only when it grows. A slot not in the
// queue holds a default T: pop_front() resets the slot (releasing what the
// element held) and emplace_back() hands out a default one.
#pragma once

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace hrpc {

template <typename T>
class RingQueue {
  static_assert(std::is_nothrow_default_constructible_v<T>, "pop_front() rebuilds a slot in place");

 public:
  bool empty() const noexcept { return size_ == 0; }
  size_t size() const noexcept { return size_; }
  size_t capacity() const noexcept { return slots_.size(); }

  // i-th element from the front; i < size().
  T& operator[](size_t i) noexcept { return slots_[(head_ + i) & (slots_.size() - 1)]; }
  const T& operator[](size_t i) const noexcept { return slots_[(head_ + i) & (slots_.size() - 1)]; }
  T& front() noexcept { return (*this)[0]; }
  T& back() noexcept { return (*this)[size_ - 1]; }

  // Appends a default T and returns it.
  T& emplace_back() {
    if (size_ == slots_.size()) Grow();
    return (*this)[size_++];
  }
  void pop_front() {
    T& slot = front();
    std::destroy_at(&slot);  // cheaper than assigning a default T
    std::construct_at(&slot);
    head_ = (head_ + 1) & (slots_.size() - 1);
    --size_;
  }
  void clear() {
    while (!empty()) pop_front();
    head_ = 0;
  }

  template <typename Fn>
  void ForEach(Fn&& fn) {
    for (size_t i = 0; i < size_; ++i) fn((*this)[i]);
  }

 private:
  static constexpr size_t kMinSlots = 8;  // a power of two, as every capacity

  void Grow() {
    std::vector<T> bigger(slots_.empty() ? kMinSlots : slots_.size() * 2);
    for (size_t i = 0; i < size_; ++i) bigger[i] = std::move((*this)[i]);
    slots_.swap(bigger);
    head_ = 0;
  }

  std::vector<T> slots_;
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace hrpc
