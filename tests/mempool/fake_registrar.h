// A Registrar that records calls, for tests.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "hrpc/mempool/registrar.h"

namespace hrpc::mempool::testing {

class FakeRegistrar final : public Registrar {
 public:
  explicit FakeRegistrar(uint32_t key_base = 100) : key_base_(key_base) {}
  std::string_view name() const override { return "fake"; }
  Result<RegionKey> Register(void* base, size_t len, int /*numa_node*/) override {
    std::lock_guard lock(mu_);
    if (fail_next_) {
      fail_next_ = false;
      return InternalError("injected failure");
    }
    ++registers_;
    if (live_.count(base) != 0) ++double_registers_;
    RegionKey k{key_base_ + next_, key_base_ + 1000 + next_, reinterpret_cast<uint64_t>(base)};
    ++next_;
    live_[base] = {len, k};
    return k;
  }
  void Unregister(void* base, size_t len, const RegionKey& key) override {
    std::lock_guard lock(mu_);
    ++unregisters_;
    auto it = live_.find(base);
    if (it == live_.end() || it->second.first != len || it->second.second.lkey != key.lkey) {
      ++bad_unregisters_;
      return;
    }
    live_.erase(it);
  }
  void FailNext() { std::lock_guard lock(mu_); fail_next_ = true; }
  int registers() const { std::lock_guard lock(mu_); return registers_; }
  int unregisters() const { std::lock_guard lock(mu_); return unregisters_; }
  int bad_unregisters() const { std::lock_guard lock(mu_); return bad_unregisters_; }
  int double_registers() const { std::lock_guard lock(mu_); return double_registers_; }
  size_t live() const { std::lock_guard lock(mu_); return live_.size(); }
  bool IsLive(void* base) const { std::lock_guard lock(mu_); return live_.count(base) != 0; }
  RegionKey KeyOf(void* base) const { std::lock_guard lock(mu_); return live_.at(base).second; }

 private:
  mutable std::mutex mu_;
  uint32_t key_base_;
  uint32_t next_ = 0;
  bool fail_next_ = false;
  int registers_ = 0, unregisters_ = 0, bad_unregisters_ = 0, double_registers_ = 0;
  std::map<void*, std::pair<size_t, RegionKey>> live_;
};

}  // namespace hrpc::mempool::testing
