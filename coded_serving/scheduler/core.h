// The scheduler's decisions, without Triton: one coding group's race of originals against
// its decode, which worker runs which task, each member's health, and the deadline.
// Not thread-safe: callers lock.
#pragma once

#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace coded {

// Roles of a coding group: role i < k carries slot i's query unchanged (systematic codes),
// the others a coded query. Non-systematic codes have only coded roles.
struct CodeShape {
  int k = 0;
  int num_workers = 0;
  bool systematic = true;
  int min_available = 0;        // a group decodes iff at least this many of its roles answered
  bool postprocess = false;     // every answer, originals included, comes from the decoder
  int num_coded() const { return num_workers - (systematic ? k : 0); }
  bool is_original(int role) const { return systematic && role < k; }
};

// A circuit breaker per member: after suspend_after consecutive misses (errors or late
// answers) a member is not called, except one probe every probe_interval_s.
class MemberHealth {
 public:
  MemberHealth(int workers, int suspend_after, double probe_interval_s);
  bool callable(int worker, double now);  // schedules the next probe when it grants one
  bool suspended(int worker, double now) const;  // not callable, not even for a probe
  void answered(int worker);
  void missed(int worker, double now);
  int suspend_after() const { return suspend_after_; }

 private:
  int suspend_after_;
  double probe_interval_s_;
  std::vector<int> misses_;
  std::vector<double> next_probe_;
};

enum class Call { Waiting, Pending, Answered, Failed, Skipped, Reserved };

// A query's answer: the row of role `role` (an original, from on_answer), or the decoder's
// estimate for slot `role` (from on_decoded).
struct Fill {
  int query;
  int role;
  bool reconstructed;
};

struct Actions {
  std::vector<int> call;    // roles to send now
  bool decode = false;      // decode now (Race::decode_mask says with what)
  std::vector<std::pair<int, std::string>> errors;  // queries that get an error
  bool finished = false;    // reported once, when the group is closed and every query answered or failed
  std::vector<int> cancel;  // with finished: calls no query needs any more
  double wakeup = std::numeric_limits<double>::infinity();  // when poll may decide more
};

// The race of one coding group, formed as queries stream in (ParM's frontend). While open,
// each query that joins takes the next slot and, with a systematic code, its original is
// called at once. At close, free slots are filled with copies of the group's own queries:
// when every query then fills more slots than there are coded roles (a lone query at k = 2)
// the code could not decode a lost query anyway, so its copies are reserves (with `copies_now`
// one copy per query is called at once; the others when an original fails or passes its
// deadline: a hedge) and the coded roles are skipped; otherwise the copies and the coded roles are called.
// A query is answered by its original as soon as that arrives. The group is decoded once
// every role has answered, failed or passed its deadline and at least min_available answered
// (deadline 0 is ParM's pure race). An original that failed is called once more when no other
// role can answer its query and the group cannot decode it. One whose call is stuck (sent a deadline
// ago and unanswered) is hedged the same way when only other stuck originals could stand in for it
// (both originals on a worker that died, say): the stuck call may still answer, and whichever answers
// first counts. Queries unanswered at the timeout get an error.
class Race {
 public:
  Race(CodeShape code, double deadline_s, double timeout_s, double now);

  int add_query(double now);  // the new query's index, which is also its slot
  void close(double now, bool copies_now);
  bool is_open() const { return open_; }
  int num_queries() const { return num_queries_; }
  int slot_query(int slot) const { return slots_[slot]; }
  int padded_slots() const { return open_ ? 0 : code_.k - num_queries_; }
  // A new query may join while the group is open, unless one of its originals still waits in the
  // scheduler's queue (rows of one execute excepted): queries that wait together leave together, in
  // one call to one worker, and two originals of one group must not share a worker.
  bool may_join(bool same_execute) const;
  bool original_queued() const;  // called, but not yet left the scheduler's queue
  double first_sent() const;  // when the first original left the queue; infinity before

  // The role's call left the scheduler's queue: its deadline counts from now, unless it already
  // passed in the queue (time a task waits for a free worker is not its member's lateness).
  void on_sent(int role, double now);
  std::vector<Fill> on_answer(int role, bool usable);  // usable: false for non-finite values
  void on_failure(int role, const std::string& reason);
  // A role no healthy worker may take: a reserve, called only if the others cannot decode.
  void on_held_back(int role, const std::string& reason);
  std::vector<Fill> on_decoded();
  void on_decode_failed(const std::string& reason);
  Actions poll(double now);

  Call state(int role) const { return state_[role]; }
  int calls(int role) const { return calls_[role]; }  // calls of the role in flight: 2 while one hedges another
  bool available(int role) const { return available_[role]; }
  bool all_resolved() const;
  const std::vector<bool>& decode_mask() const { return decode_mask_; }  // role r's row is usable iff [r]
  bool resolved(int query) const { return answered_[query] || failed_[query]; }
  bool reconstructed(int query) const { return reconstructed_[query]; }
  // Called roles still pending past their deadline (late for the breaker).
  std::vector<int> late_roles(double now) const;
  // An original failed or passed its deadline: the group's coded roles are what may answer it now.
  bool needs_coded(double now) const;

 private:
  bool settled(int role) const;
  bool decodable() const;
  bool has_original(int query) const;
  bool all_originals() const;
  bool needs_decode() const;
  bool wants_reserves() const;
  bool stuck(int role) const;
  // a pending role may still answer it, or the group may still decode (stuck originals aside, if so asked)
  bool recoverable(int query, bool stuck_originals_lost) const;
  void call(int role);
  std::string failure_message() const;

  CodeShape code_;
  double deadline_s_;
  double timeout_;
  double now_;
  bool open_ = true;
  int num_queries_ = 0;
  std::vector<int> slots_;  // query of each slot, -1 while open and free
  std::vector<Call> state_;
  std::vector<double> deadline_;
  std::vector<double> sent_at_;  // when the role's latest call left the scheduler's queue
  std::vector<int> calls_;
  std::vector<std::string> reasons_;
  std::vector<bool> available_;
  bool decoding_ = false;
  std::vector<bool> decode_mask_;
  std::vector<bool> answered_, failed_, reconstructed_;
  std::vector<bool> retried_;  // per role
  std::vector<int> to_call_;
  std::vector<std::pair<int, std::string>> errors_;
  bool finished_ = false;
};

// Which worker may run which role. Dedicated: data roles run on any data worker (they serve
// the same model) and coded role j on worker k + j. Every worker: each worker hosts the
// deployed model and the parity model, so any role runs anywhere (RAID-5 rather than RAID-4).
struct Placement {
  CodeShape code;
  bool every_worker = false;
  bool pinned = false;  // dedicated, data role i only on data worker i
  bool runs(int worker, int role) const;
  int model(int role) const { return code.is_original(role) ? 0 : 1 + role - (code.systematic ? code.k : 0); }
  // Where a role goes when loads are equal. Every worker: roles rotate with the group. Dedicated:
  // data role i on data worker i + turn, where the scheduler turns groups that may stay partial
  // (lone queries take turns) and keeps full groups in order (data role i on member i).
  int preferred(uint64_t group, int role, int turn) const;
};

struct Task {
  uint64_t group;
  int role;
  int preferred;        // the worker it goes to when loads are equal
  bool forced = false;  // a reserve: called whatever the breaker says
  bool copy = false;    // a copy of a query (a partial group's, or a hedge of a stuck original): its worth is its own worker, so it never shares one
};

struct Assignment {
  int worker;
  std::vector<Task> tasks;  // one member call, one row per task, all for the same model
};

// Late binding: tasks wait here and a worker is handed its next ones only when it has fewer
// than calls_per_worker calls in flight. Bound at arrival, a task would wait behind that
// worker's current execute while another worker idles; bound late, it goes to whichever
// worker frees first, so a straggler holds up only what it already runs. Two unanswered tasks of
// one group never share a worker: one slow worker must cost a group at most one role; and a task
// never goes to a worker that failed one of its group. Except with every-worker placement and fewer
// healthy workers than roles: no group can then spread all its roles, and an original that waited
// for a worker its group is not running on would make every group wait on every remaining worker;
// its originals (not copies) go to whichever healthy worker frees first.
class Dispatcher {
 public:
  Dispatcher(Placement placement, int calls_per_worker, int max_batch, MemberHealth* health);
  void push(const Task& task) { queue_.push_back(task); }
  // Hands free workers their next tasks, least loaded first (the preferred one among equals);
  // a call also takes the queued tasks that prefer its worker or that no other free worker could start.
  // held_back: tasks whose every possible worker is suspended; unplaceable: tasks no worker may
  // take (each one it could run on failed a task of the group). A task whose possible workers
  // are busy with its group's other tasks waits for one of them to answer.
  std::vector<Assignment> next(double now, std::vector<Task>& held_back, std::vector<Task>& unplaceable);
  void returned(int worker) { --in_flight_[worker]; }
  // The worker answered one of the group's tasks: it can no longer cost the group that role, so
  // it may take another of the group's tasks.
  void answered(uint64_t group, int worker) { mark(group, worker, Mark::Free); }
  // The worker failed one of the group's tasks: none of the group's other tasks goes there.
  void failed(uint64_t group, int worker) { mark(group, worker, Mark::Failed); }
  // The group's redundancy (coded tasks, copies) leaves the queue with the originals from now on (see next()).
  void promote(uint64_t group) { promoted_.insert(group); }
  void forget(uint64_t group);  // drops its queued tasks
  // A worker idles that may take the group's role, and another stays idle for the next query's
  // original: an immediate copy costs a non-preemptible execute that the next query would wait for.
  bool spare_worker_for(uint64_t group, int role, double now) const;
  int in_flight(int worker) const { return in_flight_[worker]; }

 private:
  enum class Mark : char { Free, Running, Failed };  // a worker, for one group
  Mark mark_of(uint64_t group, int worker) const;
  void mark(uint64_t group, int worker, Mark mark);
  int free_for_originals(double now) const;  // workers that could start a query's original now
  bool may_take(const Task& task, int worker, double now) const;  // placement and the spreading rule
  std::vector<int> candidates(const Task& task, double now) const;
  bool runs_its_group(const Task& task) const;  // a worker that may run it is running a task of its group
  bool free_peer(const Task& task, int except, double now) const;

  Placement placement_;
  int calls_per_worker_, max_batch_;
  MemberHealth* health_;
  std::deque<Task> queue_;
  std::map<uint64_t, std::vector<Mark>> marks_;  // per group with a task sent: its mark on each worker
  std::set<uint64_t> promoted_;
  std::vector<int> in_flight_;
};

// The deadline after which a member's answer counts as missing: a high percentile of the
// members' recent call latencies times a margin, within [min_s, max_s]; max_s until the
// window holds enough calls to say.
class AdaptiveDeadline {
 public:
  AdaptiveDeadline(double min_s, double max_s, double percentile, double margin, int window);
  void record(double latency_s);
  double deadline() const { return deadline_; }

 private:
  double min_s_, max_s_, percentile_, margin_;
  size_t window_;
  std::vector<double> recent_;  // a ring of the last `window` latencies
  size_t next_ = 0;
  double deadline_;
};

}  // namespace coded
