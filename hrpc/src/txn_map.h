// Private to the RPC runtime: calls in flight on one connection, by
// transaction id.
//
// Entries come and go at the call rate, so the map keeps the nodes of erased
// entries (up to kSpareNodes) and reuses them: an insert and an erase then
// allocate and free nothing. One thread uses a map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hrpc::internal {

template <typename V>
class TxnMap {
 public:
  using Map = std::unordered_map<uint64_t, V>;
  using iterator = typename Map::iterator;
  using const_iterator = typename Map::const_iterator;
  static constexpr size_t kSpareNodes = 64;

  TxnMap() = default;
  TxnMap(TxnMap&& o) noexcept = default;
  TxnMap& operator=(TxnMap&& o) noexcept = default;

  // Inserts (txn, v) unless txn is present; true if it inserted.
  bool Insert(uint64_t txn, V v) {
    if (spare_.empty()) return map_.emplace(txn, std::move(v)).second;
    typename Map::node_type node = std::move(spare_.back());
    spare_.pop_back();
    node.key() = txn;
    node.mapped() = std::move(v);
    auto r = map_.insert(std::move(node));
    if (!r.inserted) Keep(std::move(r.node));
    return r.inserted;
  }
  void Erase(iterator it) { Keep(map_.extract(it)); }
  // Erases txn; true if it was there.
  bool Erase(uint64_t txn) {
    auto it = map_.find(txn);
    if (it == map_.end()) return false;
    Erase(it);
    return true;
  }

  iterator find(uint64_t txn) { return map_.find(txn); }
  const_iterator find(uint64_t txn) const { return map_.find(txn); }
  bool contains(uint64_t txn) const { return map_.find(txn) != map_.end(); }
  iterator begin() { return map_.begin(); }
  iterator end() { return map_.end(); }
  const_iterator begin() const { return map_.begin(); }
  const_iterator end() const { return map_.end(); }
  bool empty() const noexcept { return map_.empty(); }
  size_t size() const noexcept { return map_.size(); }
  void clear() {
    map_.clear();
    spare_.clear();
  }

 private:
  void Keep(typename Map::node_type node) {
    if (spare_.size() >= kSpareNodes) return;  // freed here
    node.mapped() = V();                       // holds nothing while spare
    spare_.push_back(std::move(node));
  }

  Map map_;
  std::vector<typename Map::node_type> spare_;
};

}  // namespace hrpc::internal
