// RAII handles for verbs and rdmacm resources. Each owner declares them in
// dependency order (context/cm_id first, QP last) so that destruction runs
// QP -> SRQ -> CQ -> completion channel -> MR/MW -> PD -> context, the order
// rdma-core's examples tear down by hand.
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <memory>
#include <utility>
#include <string>

#include "hrpc/base/status.h"

namespace hrpc::transport::rdma {

struct VerbsDeleter {
  void operator()(ibv_pd* p) const noexcept { ibv_dealloc_pd(p); }
  void operator()(ibv_cq* p) const noexcept { ibv_destroy_cq(p); }
  void operator()(ibv_comp_channel* p) const noexcept { ibv_destroy_comp_channel(p); }
  void operator()(ibv_srq* p) const noexcept { ibv_destroy_srq(p); }
  void operator()(ibv_mr* p) const noexcept { ibv_dereg_mr(p); }
  void operator()(ibv_mw* p) const noexcept { ibv_dealloc_mw(p); }
  void operator()(rdma_event_channel* p) const noexcept { rdma_destroy_event_channel(p); }
  void operator()(ibv_context** p) const noexcept { rdma_free_devices(p); }
};
using PdPtr = std::unique_ptr<ibv_pd, VerbsDeleter>;
using CqPtr = std::unique_ptr<ibv_cq, VerbsDeleter>;
using CompChannelPtr = std::unique_ptr<ibv_comp_channel, VerbsDeleter>;
using SrqPtr = std::unique_ptr<ibv_srq, VerbsDeleter>;
using MwPtr = std::unique_ptr<ibv_mw, VerbsDeleter>;
using EventChannelPtr = std::unique_ptr<rdma_event_channel, VerbsDeleter>;
using DeviceListPtr = std::unique_ptr<ibv_context*, VerbsDeleter>;

// An rdma_cm_id and the QP created on it (rdma_create_qp). Destroys the QP
// first, then the id. rdma_destroy_id blocks until every event of the id was
// acked: the transport acks each event as soon as it has copied it.
class CmId {
 public:
  CmId() = default;
  explicit CmId(rdma_cm_id* id) : id_(id) {}
  CmId(CmId&& o) noexcept : id_(std::exchange(o.id_, nullptr)), has_qp_(std::exchange(o.has_qp_, false)) {}
  CmId& operator=(CmId&& o) noexcept {
    if (this != &o) {
      Reset();
      id_ = std::exchange(o.id_, nullptr);
      has_qp_ = std::exchange(o.has_qp_, false);
    }
    return *this;
  }
  ~CmId() { Reset(); }
  rdma_cm_id* get() const noexcept { return id_; }
  rdma_cm_id* operator->() const noexcept { return id_; }
  explicit operator bool() const noexcept { return id_ != nullptr; }
  ibv_qp* qp() const noexcept { return has_qp_ ? id_->qp : nullptr; }
  void set_has_qp() noexcept { has_qp_ = true; }
  void DestroyQp() noexcept {
    if (has_qp_) rdma_destroy_qp(id_);
    has_qp_ = false;
  }
  void Reset() noexcept {
    DestroyQp();
    if (id_ != nullptr) rdma_destroy_id(id_);
    id_ = nullptr;
  }

 private:
  rdma_cm_id* id_ = nullptr;
  bool has_qp_ = false;
};

inline Status VerbsError(int err, std::string_view what) { return ErrnoStatus(err, what); }

}  // namespace hrpc::transport::rdma
