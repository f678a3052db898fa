// The ensemble's Prometheus counters, through Triton's custom-metrics API (label model=<name>,
// and member=<member> for the per-member ones).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "triton_api.h"

namespace coded {

struct FamilyDeleter {
  void operator()(TRITONSERVER_MetricFamily* f) const;
};
struct MetricDeleter {
  void operator()(TRITONSERVER_Metric* m) const;
};
using FamilyPtr = std::unique_ptr<TRITONSERVER_MetricFamily, FamilyDeleter>;
using MetricPtr = std::unique_ptr<TRITONSERVER_Metric, MetricDeleter>;

class Counter {
 public:
  Counter() = default;
  Counter(TRITONSERVER_MetricFamily* family, const std::string& model, const std::string& member = "");
  void add(double value) const;

 private:
  MetricPtr metric_;
};

struct GroupCounts {
  int queries = 0, reconstructed = 0, errors = 0, groups = 0, padded_slots = 0;
  double decode_us = 0;
  std::vector<int> failed_workers, late_workers;
};

// One family per counter name for the whole backend, created at its initialise and deleted at
// its finalise. Triton reference-counts a labelled metric only within one family object: two
// family objects of one name (two ensembles, or the old and new version of one during a reload)
// share the Prometheus family, and deleting one's metric frees the counter the other still uses.
struct MetricFamilies {
  MetricFamilies();
  FamilyPtr queries, reconstructed, errors, groups, padded, decode_us, member_rows, member_errors, member_late;
};

class EnsembleMetrics {
 public:
  EnsembleMetrics(const MetricFamilies& families, const std::string& model, const std::vector<std::string>& members);
  void record(const GroupCounts& counts) const;
  // Rows a member call answered, stragglers no group waited for included: the work redundancy cost.
  void answered_rows(int rows) const { member_rows_.add(rows); }

 private:
  Counter queries_, reconstructed_, errors_, groups_, padded_, decode_us_, member_rows_;
  std::vector<Counter> member_errors_, member_late_;
};

}  // namespace coded
