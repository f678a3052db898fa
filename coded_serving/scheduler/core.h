// The scheduler's decisions, without Triton: coding groups, who is called, the race of
// originals against decodes, and each member's health. Not thread-safe: callers lock.
#pragma once

#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace coded {

// Queries laid out in coding groups: slot i of group g holds query at(g, i). A partial last
// group is filled with copies of its own queries instead of waiting for more traffic.
struct Layout {
  int k = 0;
  int num_queries = 0;
  std::vector<int> slots;

  static Layout for_queries(int num_queries, int k);
  int groups() const { return static_cast<int>(slots.size()) / k; }
  int at(int group, int slot) const { return slots[group * k + slot]; }
  int min_copies() const;  // slots held by the least replicated query
  int padded_slots() const { return static_cast<int>(slots.size()) - num_queries; }
};

struct CodeShape {
  int k = 0;
  int num_workers = 0;
  bool systematic = true;
  int min_available = 0;        // a group decodes iff at least this many of its workers answered
  bool postprocess = false;     // every answer, originals included, comes from the decoder
  int num_coded() const { return num_workers - (systematic ? k : 0); }
};

// A circuit breaker per member: after suspend_after consecutive misses (errors or late
// answers) a member is not called, except one probe every probe_interval_s.
class MemberHealth {
 public:
  MemberHealth(int workers, int suspend_after, double probe_interval_s);
  bool callable(int worker, double now);  // schedules the next probe when it grants one
  void answered(int worker);
  void missed(int worker, double now);
  int suspend_after() const { return suspend_after_; }

 private:
  int suspend_after_;
  double probe_interval_s_;
  std::vector<int> misses_;
  std::vector<double> next_probe_;
};

struct Plan {
  std::vector<int> called;
  std::vector<int> reserved;  // called only if the others leave a query without an answer
  std::map<int, std::string> reasons;  // why a worker was held back
};

// Decides which workers a fan-out calls. Shared by every fan-out of a model: it keeps the
// calls in flight per member and whose turn it is.
class Planner {
 public:
  Planner(CodeShape code, MemberHealth* health) : code_(code), health_(health), in_flight_(code.num_workers) {}

  // Every worker, unless each query fills more slots than there are coded workers (a lone
  // query padded with its copies): then one data worker per query, the one with the fewest
  // calls in flight (taking turns among equals); its copies are reserves and the coded
  // workers are not called, since losing every copy is more than the code can decode.
  Plan plan(const Layout& layout, double now);
  void sent(int worker) { ++in_flight_[worker]; }
  void returned(int worker) { --in_flight_[worker]; }

 private:
  CodeShape code_;
  MemberHealth* health_;
  std::vector<int> in_flight_;
  unsigned turn_ = 0;
};

enum class Call { Pending, Answered, Failed, Skipped, Reserved };

// A query's answer: copy row `group` of worker `slot`'s output (an original), or row
// `group`, slot `slot` of the decoder's estimates.
struct Fill {
  int query;
  int group;
  int slot;
  bool reconstructed;
};

struct Actions {
  std::vector<int> call;    // workers to send now
  std::vector<int> decode;  // groups to decode now (Race::decode_mask says with what)
  std::vector<std::pair<int, std::string>> errors;  // queries that get an error
  bool finished = false;    // reported once, when every query is answered or failed
  std::vector<int> cancel;  // with finished: calls no group needs any more
  double wakeup = std::numeric_limits<double>::infinity();  // when poll may decide more
};

// The race of one fan-out. A query is answered by its original as soon as that arrives. A
// group whose missing workers failed or passed their deadline is decoded once every worker
// has answered, failed or passed its deadline and at least min_available of them answered
// (deadline 0 is ParM's pure race). Reserves are called once a group has lost an original
// and cannot be decoded without them. Queries unanswered at the timeout get an error.
class Race {
 public:
  Race(CodeShape code, Layout layout, const Plan& plan, double deadline_s, double timeout_s, double now);

  // usable[g]: worker's row of group g can be used (false: non-finite values, that group only)
  std::vector<Fill> on_answer(int worker, const std::vector<bool>& usable);
  void on_failure(int worker, const std::string& reason);
  std::vector<Fill> on_decoded(const std::vector<int>& groups);
  void on_decode_failed(const std::vector<int>& groups, const std::string& reason);
  Actions poll(double now);

  const Layout& layout() const { return layout_; }
  Call state(int worker) const { return state_[worker]; }
  bool available(int group, int worker) const { return available_[group * code_.num_workers + worker]; }
  // What a decode of `group` was started with: worker w's row is usable iff mask[w].
  const std::vector<bool>& decode_mask(int group) const { return decode_mask_.at(group); }
  bool resolved(int query) const { return answered_[query] || failed_[query]; }
  bool reconstructed(int query) const { return reconstructed_[query]; }
  // At the finish: called workers still pending past their deadline (late for the breaker).
  std::vector<int> late_workers(double now) const;

 private:
  bool settled(int worker) const;
  bool decodable(int group) const;
  bool has_original(int group, int query) const;
  bool all_originals(int group) const;
  bool needs_decode(int group) const;
  bool group_resolved(int group) const;
  bool wants_reserves() const;
  void call(int worker);
  std::string failure_message(int group) const;

  CodeShape code_;
  Layout layout_;
  double deadline_s_;
  double timeout_;
  double now_;
  std::vector<Call> state_;
  std::vector<double> deadline_;
  std::vector<std::string> reasons_;
  std::vector<bool> available_;  // [group][worker]
  std::vector<bool> decoding_;
  std::map<int, std::vector<bool>> decode_mask_;
  std::vector<bool> answered_, failed_, reconstructed_;
  std::vector<int> to_call_;
  std::vector<std::pair<int, std::string>> errors_;
  bool finished_ = false;
};

}  // namespace coded
