#include "dedup.h"

namespace hrpc::internal {

std::pair<std::shared_ptr<DedupEntry>, bool> DedupWindow::Begin(uint64_t id, uint32_t service_id,
                                                                 uint32_t method_id, uint32_t request_crc) {
  std::lock_guard lock(mu_);
  Evict(Clock::now());
  auto [it, inserted] = by_id_.try_emplace(id);
  if (!inserted) {
    const DedupEntry& e = *it->second;
    if (e.service_id != service_id || e.method_id != method_id || e.request_crc != request_crc) {
      return {nullptr, false};
    }
    ++hits_;
    return {it->second, false};
  }
  it->second = std::make_shared<DedupEntry>();
  it->second->service_id = service_id;
  it->second->method_id = method_id;
  it->second->request_crc = request_crc;
  return {it->second, true};
}

void DedupWindow::Finish(uint64_t id, const std::shared_ptr<DedupEntry>& e, Status status, std::string&& response,
                         bool had_attachment) {
  // Answers that say the call did not (fully) run: the retry runs it. A
  // handler's CANCELLED is one (it stopped at a cancel, which its deadline
  // passing or its connection dropping also is), whoever caused it.
  if (status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kResourceExhausted ||
      status.code() == StatusCode::kCancelled) {
    return Abandon(id, e);
  }
  {
    std::lock_guard lock(mu_);
    e->ran = true;
    e->status = std::move(status);
    e->had_attachment = had_attachment;
    e->kept = e->status.ok() && !had_attachment && response.size() <= max_bytes_;
    if (e->kept) e->response = std::move(response);
    bytes_ += e->response.size();
    finished_.emplace_back(id, Clock::now());
    Evict(Clock::now());
  }
  e->done.Set();
}

void DedupWindow::Abandon(uint64_t id, const std::shared_ptr<DedupEntry>& e) {
  {
    std::lock_guard lock(mu_);
    if (auto it = by_id_.find(id); it != by_id_.end() && it->second == e) by_id_.erase(it);
  }
  e->done.Set();
}

size_t DedupWindow::size() const {
  std::lock_guard lock(mu_);
  return by_id_.size();
}

void DedupWindow::Evict(Clock::time_point now) {
  while (!finished_.empty() &&
         (now - finished_.front().second >= window_ || by_id_.size() > max_entries_ || bytes_ > max_bytes_)) {
    if (auto it = by_id_.find(finished_.front().first); it != by_id_.end()) {
      bytes_ -= it->second->response.size();
      by_id_.erase(it);
    }
    finished_.pop_front();
  }
}

}  // namespace hrpc::internal
