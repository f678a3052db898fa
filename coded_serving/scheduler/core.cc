#include "core.h"

#include <algorithm>

namespace coded {

MemberHealth::MemberHealth(int workers, int suspend_after, double probe_interval_s)
    : suspend_after_(suspend_after), probe_interval_s_(probe_interval_s), misses_(workers), next_probe_(workers) {}

bool MemberHealth::callable(int worker, double now) {
  if (suspended(worker, now)) return false;
  if (suspend_after_ > 0 && misses_[worker] >= suspend_after_) next_probe_[worker] = now + probe_interval_s_;
  return true;
}

bool MemberHealth::suspended(int worker, double now) const {
  return suspend_after_ > 0 && misses_[worker] >= suspend_after_ && now < next_probe_[worker];
}

void MemberHealth::answered(int worker) { misses_[worker] = 0; }

void MemberHealth::missed(int worker, double now) {
  if (++misses_[worker] == suspend_after_) next_probe_[worker] = now + probe_interval_s_;
}

Race::Race(CodeShape code, double deadline_s, double timeout_s, double now)
    : code_(code),
      deadline_s_(deadline_s),
      timeout_(now + std::max(timeout_s, deadline_s)),
      now_(now),
      slots_(code.k, -1),
      state_(code.num_workers, Call::Waiting),
      deadline_(code.num_workers, now),
      sent_at_(code.num_workers, std::numeric_limits<double>::infinity()),
      calls_(code.num_workers, 0),
      reasons_(code.num_workers),
      available_(code.num_workers, false),
      answered_(code.k, false),
      failed_(code.k, false),
      reconstructed_(code.k, false),
      retried_(code.num_workers, false) {}

int Race::add_query(double now) {
  now_ = now;
  int query = num_queries_++;
  slots_[query] = query;
  if (code_.systematic) call(query);
  return query;
}

void Race::close(double now, bool copies_now) {
  now_ = now;
  open_ = false;
  for (int slot = num_queries_; slot < code_.k; ++slot) slots_[slot] = slot % num_queries_;
  const int min_copies = code_.k / num_queries_;
  const bool lone = code_.systematic && min_copies > code_.num_coded();
  std::vector<bool> copied(num_queries_, false);  // one copy per query hedges it; more only if that fails
  for (int role = 0; role < code_.num_workers; ++role) {
    if (state_[role] != Call::Waiting) continue;
    if (lone && !code_.is_original(role)) {
      state_[role] = Call::Skipped;
    } else if (lone && (!copies_now || copied[slots_[role]])) {
      state_[role] = Call::Reserved;
    } else {
      if (lone) copied[slots_[role]] = true;
      call(role);
    }
  }
}

bool Race::may_join(bool same_execute) const { return open_ && (same_execute || !original_queued()); }

bool Race::original_queued() const {
  for (int role = 0; role < num_queries_ && code_.systematic; ++role)
    if (state_[role] == Call::Pending && sent_at_[role] == std::numeric_limits<double>::infinity()) return true;
  return false;
}

double Race::first_sent() const {
  double first = std::numeric_limits<double>::infinity();
  for (int role = 0; role < num_queries_ && code_.systematic; ++role) first = std::min(first, sent_at_[role]);
  return first;
}

void Race::call(int role) {
  state_[role] = Call::Pending;
  deadline_[role] = now_ + deadline_s_;
  sent_at_[role] = std::numeric_limits<double>::infinity();
  ++calls_[role];
  reasons_[role].clear();
  to_call_.push_back(role);
}

void Race::on_sent(int role, double now) {
  if (state_[role] != Call::Pending) return;
  if (now < deadline_[role]) deadline_[role] = now + deadline_s_;
  sent_at_[role] = now;
}

std::vector<Fill> Race::on_answer(int role, bool usable) {
  std::vector<Fill> fills;
  if (state_[role] != Call::Pending) return fills;
  state_[role] = Call::Answered;
  available_[role] = usable;
  if (usable && code_.is_original(role) && !code_.postprocess && !resolved(slots_[role])) {
    answered_[slots_[role]] = true;
    fills.push_back({slots_[role], role, false});
  }
  return fills;
}

void Race::on_failure(int role, const std::string& reason) {
  if (state_[role] != Call::Pending) return;
  reasons_[role] = reason;
  if (--calls_[role] == 0) state_[role] = Call::Failed;
}

void Race::on_held_back(int role, const std::string& reason) {
  if (state_[role] != Call::Pending) return;
  reasons_[role] = reason;
  if (--calls_[role] == 0) state_[role] = Call::Reserved;
}

std::vector<Fill> Race::on_decoded() {
  std::vector<Fill> fills;
  for (int slot = 0; slot < code_.k; ++slot) {
    int query = slots_[slot];
    if (resolved(query)) continue;
    bool original = false;
    for (int i = 0; i < code_.k && code_.systematic; ++i) original |= slots_[i] == query && decode_mask_[i];
    answered_[query] = true;
    reconstructed_[query] = !original;
    fills.push_back({query, slot, !original});
  }
  return fills;
}

void Race::on_decode_failed(const std::string& reason) {
  for (int query = 0; query < num_queries_; ++query) {
    if (resolved(query)) continue;
    failed_[query] = true;
    errors_.emplace_back(query, reason);
  }
}

bool Race::settled(int role) const {
  return state_[role] != Call::Pending || now_ >= deadline_[role];
}

bool Race::decodable() const {
  if (open_) return false;
  int count = 0;
  for (int role = 0; role < code_.num_workers; ++role) {
    if (!settled(role)) return false;
    count += available_[role];
  }
  return count >= code_.min_available;
}

bool Race::has_original(int query) const {
  for (int slot = 0; slot < code_.k && code_.systematic; ++slot)
    if (slots_[slot] == query && available_[slot]) return true;
  return false;
}

bool Race::all_originals() const {
  for (int query = 0; query < num_queries_; ++query)
    if (!has_original(query)) return false;
  return true;
}

bool Race::needs_decode() const {
  if (open_) return false;
  if (code_.postprocess) return all_originals() || decodable();
  return !all_originals() && decodable();
}

bool Race::all_resolved() const {
  for (int query = 0; query < num_queries_; ++query)
    if (!resolved(query)) return false;
  return true;
}

bool Race::wants_reserves() const {
  if (open_ || decoding_ || all_resolved() || all_originals() || decodable()) return false;
  bool any_reserved = false, any_pending = false, any_missing = false;
  for (int role = 0; role < code_.num_workers; ++role) {
    any_reserved |= state_[role] == Call::Reserved;
    any_pending |= state_[role] == Call::Pending;
    any_missing |= state_[role] == Call::Failed || (state_[role] == Call::Pending && now_ >= deadline_[role]) ||
                   (state_[role] == Call::Answered && !available_[role]);
  }
  return any_reserved && (any_missing || !any_pending);
}

bool Race::stuck(int role) const {
  return state_[role] == Call::Pending && deadline_s_ > 0 && now_ >= sent_at_[role] + deadline_s_;
}

bool Race::recoverable(int query, bool stuck_originals_lost) const {
  int possible = 0;
  for (int role = 0; role < code_.num_workers; ++role) {
    const bool lost = stuck_originals_lost && code_.is_original(role) && stuck(role);
    const bool open = (state_[role] == Call::Pending && !lost) || state_[role] == Call::Reserved;
    if (open && code_.is_original(role) && slots_[role] == query) return true;
    possible += available_[role] || open;
  }
  return possible >= code_.min_available;
}

std::string Race::failure_message() const {
  std::string reasons;
  for (int role = 0; role < code_.num_workers; ++role) {
    if (state_[role] == Call::Skipped || available_[role]) continue;
    std::string why = !reasons_[role].empty()          ? reasons_[role]
                      : state_[role] == Call::Answered ? "returned non-finite values"
                                                       : "no answer in time";
    reasons += (reasons.empty() ? "" : "; ") + ("role " + std::to_string(role) + ": " + why);
  }
  return "no answer and no reconstruction possible (" + reasons + ")";
}

Actions Race::poll(double now) {
  Actions actions;
  now_ = now;
  if (finished_) return actions;
  if (wants_reserves()) {
    for (int role = 0; role < code_.num_workers; ++role)
      if (state_[role] == Call::Reserved) call(role);
    timeout_ = std::max(timeout_, now_ + deadline_s_);
  }
  // A member's error or hang must not cost a query nothing else can recover: its original goes out once more.
  // A failed one when no pending call can recover it; a stuck one when only other stuck originals could
  // (they may sit on the same dead worker; a late coded call is only late: it never shares their worker).
  for (int role = 0; role < code_.num_workers && !open_ && !decoding_; ++role) {
    const bool failed = state_[role] == Call::Failed;
    if (!code_.is_original(role) || (!failed && !stuck(role)) || retried_[role] || resolved(slots_[role]) ||
        recoverable(slots_[role], !failed))
      continue;
    retried_[role] = true;
    call(role);
    timeout_ = std::max(timeout_, now_ + deadline_s_);
  }
  actions.call.swap(to_call_);
  bool any_pending = false;
  for (int role = 0; role < code_.num_workers; ++role) any_pending |= state_[role] == Call::Pending;
  if (!open_ && !all_resolved()) {
    if (!decoding_ && needs_decode()) {
      decoding_ = actions.decode = true;
      decode_mask_ = available_;
    } else if (now_ >= timeout_ || (!decoding_ && !any_pending)) {
      on_decode_failed(failure_message());
    }
  }
  actions.errors.swap(errors_);
  if (!open_ && all_resolved()) {
    finished_ = actions.finished = true;
    for (int role = 0; role < code_.num_workers; ++role)
      if (state_[role] == Call::Pending) actions.cancel.push_back(role);
    return actions;
  }
  for (int role = 0; role < code_.num_workers; ++role) {
    if (state_[role] != Call::Pending) continue;
    if (deadline_[role] > now_) actions.wakeup = std::min(actions.wakeup, deadline_[role]);
    if (code_.is_original(role) && deadline_s_ > 0 && sent_at_[role] + deadline_s_ > now_)
      actions.wakeup = std::min(actions.wakeup, sent_at_[role] + deadline_s_);  // when it may be stuck
  }
  if (!open_) actions.wakeup = std::min(actions.wakeup, timeout_);
  return actions;
}

std::vector<int> Race::late_roles(double now) const {
  std::vector<int> late;
  for (int role = 0; role < code_.num_workers; ++role)
    if (state_[role] == Call::Pending && now >= deadline_[role]) late.push_back(role);
  return late;
}

bool Race::needs_coded(double now) const {
  for (int role = 0; role < code_.num_workers; ++role)
    if (code_.is_original(role) &&
        (state_[role] == Call::Failed || (state_[role] == Call::Pending && now >= deadline_[role])))
      return true;
  return false;
}

bool Placement::runs(int worker, int role) const {
  if (every_worker) return true;
  if (code.is_original(role)) return pinned ? worker == role : worker < code.k;
  return worker == role;
}

int Placement::preferred(uint64_t group, int role, int turn) const {
  if (every_worker) return static_cast<int>((group + role) % code.num_workers);
  return code.is_original(role) ? (role + turn) % code.k : role;
}

Dispatcher::Dispatcher(Placement placement, int calls_per_worker, int max_batch, MemberHealth* health)
    : placement_(placement),
      calls_per_worker_(calls_per_worker),
      max_batch_(max_batch),
      health_(health),
      in_flight_(placement.code.num_workers, 0) {}

Dispatcher::Mark Dispatcher::mark_of(uint64_t group, int worker) const {
  auto it = marks_.find(group);
  return it == marks_.end() ? Mark::Free : it->second[worker];
}

void Dispatcher::mark(uint64_t group, int worker, Mark mark) {
  auto it = marks_.find(group);  // a group already forgotten stays forgotten
  if (it != marks_.end()) it->second[worker] = mark;
}

bool Dispatcher::may_take(const Task& task, int worker, double now) const {
  if (!placement_.runs(worker, task.role)) return false;
  const Mark mark = mark_of(task.group, worker);
  if (mark != Mark::Running) return mark == Mark::Free;
  if (!placement_.every_worker || !placement_.code.is_original(task.role) || task.copy ||
      health_->suspended(worker, now))
    return false;
  int healthy = 0;
  for (int w = 0; w < placement_.code.num_workers; ++w) healthy += !health_->suspended(w, now);
  return healthy < placement_.code.num_workers;
}

std::vector<int> Dispatcher::candidates(const Task& task, double now) const {
  std::vector<int> workers;
  for (int w = 0; w < placement_.code.num_workers; ++w)
    if (may_take(task, w, now)) workers.push_back(w);
  return workers;
}

bool Dispatcher::runs_its_group(const Task& task) const {
  for (int w = 0; w < placement_.code.num_workers; ++w)
    if (placement_.runs(w, task.role) && mark_of(task.group, w) == Mark::Running) return true;
  return false;
}

bool Dispatcher::free_peer(const Task& task, int except, double now) const {
  for (int w : candidates(task, now))
    if (w != except && in_flight_[w] < calls_per_worker_ && (task.forced || !health_->suspended(w, now))) return true;
  return false;
}

std::vector<Assignment> Dispatcher::next(double now, std::vector<Task>& held_back, std::vector<Task>& unplaceable) {
  std::vector<Assignment> assignments;
  const int workers = placement_.code.num_workers;
  // Originals and the redundancy of promoted groups before other redundancy, coded tasks and
  // copies padding a partial group (each in arrival order): an original answers its query by
  // itself, redundancy matters only once an original is late, so where they compete for a worker
  // (every-worker placement) redundancy spends idle capacity until a group needs it.
  auto needed = [&](const Task& t) {
    return (placement_.code.is_original(t.role) && !t.copy) || promoted_.count(t.group) > 0;
  };
  std::stable_partition(queue_.begin(), queue_.end(), needed);
  for (auto it = queue_.begin(); it != queue_.end();) {
    std::vector<int> options = candidates(*it, now);
    if (options.empty() && runs_its_group(*it)) {  // that worker answers or fails soon: wait for it
      ++it;
      continue;
    }
    bool all_suspended = !it->forced;
    for (int w : options) all_suspended &= health_->suspended(w, now);
    if (options.empty() || all_suspended) {
      (options.empty() ? unplaceable : held_back).push_back(*it);
      it = queue_.erase(it);
      continue;
    }
    // Redundancy nobody waits for yet takes a worker that serves originals only if another stays free.
    const bool spare = !placement_.code.systematic || needed(*it) || free_for_originals(now) >= 2;
    const int start = it->preferred;
    std::sort(options.begin(), options.end(), [&](int a, int b) {
      if (in_flight_[a] != in_flight_[b]) return in_flight_[a] < in_flight_[b];
      return (a - start + workers) % workers < (b - start + workers) % workers;
    });
    int chosen = -1;
    for (int w : options)
      if (in_flight_[w] < calls_per_worker_ && (spare || !placement_.runs(w, 0)) &&
          (it->forced || health_->callable(w, now))) {
        chosen = w;
        break;
      }
    if (chosen < 0) {
      ++it;
      continue;
    }
    ++in_flight_[chosen];
    Assignment assignment{chosen, {}};
    const int model = placement_.model(it->role);
    for (auto take = it; take != queue_.end() && static_cast<int>(assignment.tasks.size()) < max_batch_;) {
      bool fits = placement_.model(take->role) == model && may_take(*take, chosen, now) &&
                  (take == it || take->preferred == chosen || !free_peer(*take, chosen, now));
      if (!fits) {
        ++take;
        continue;
      }
      std::vector<Mark>& marks = marks_[take->group];
      marks.resize(workers, Mark::Free);
      marks[chosen] = Mark::Running;
      assignment.tasks.push_back(*take);
      take = queue_.erase(take);
    }
    assignments.push_back(std::move(assignment));
    it = queue_.begin();  // a worker that was busy for the earlier tasks may be the chosen one's peer
  }
  return assignments;
}

void Dispatcher::forget(uint64_t group) {
  marks_.erase(group);
  promoted_.erase(group);
  queue_.erase(std::remove_if(queue_.begin(), queue_.end(), [&](const Task& t) { return t.group == group; }),
               queue_.end());
}

int Dispatcher::free_for_originals(double now) const {
  int free = 0;
  for (int w = 0; w < placement_.code.num_workers; ++w)
    free += in_flight_[w] < calls_per_worker_ && placement_.runs(w, 0) && !health_->suspended(w, now);
  return free;
}

bool Dispatcher::spare_worker_for(uint64_t group, int role, double now) const {
  for (int w = 0; w < placement_.code.num_workers; ++w)
    if (placement_.runs(w, role) && mark_of(group, w) == Mark::Free && in_flight_[w] < calls_per_worker_ &&
        !health_->suspended(w, now))
      return free_for_originals(now) >= 2;
  return false;
}

AdaptiveDeadline::AdaptiveDeadline(double min_s, double max_s, double percentile, double margin, int window)
    : min_s_(std::min(min_s, max_s)), max_s_(max_s), percentile_(percentile), margin_(margin), window_(window),
      deadline_(max_s) {}

void AdaptiveDeadline::record(double latency_s) {
  if (recent_.size() < window_) {
    recent_.push_back(latency_s);
  } else {
    recent_[next_] = latency_s;
    next_ = (next_ + 1) % window_;
  }
  // a percentile of too few calls says nothing about the tail
  if (recent_.size() < std::min<size_t>(window_, 20)) return;
  std::vector<double> sorted(recent_);
  size_t index = std::min(sorted.size() - 1, static_cast<size_t>(percentile_ / 100.0 * sorted.size()));
  std::nth_element(sorted.begin(), sorted.begin() + index, sorted.end());
  deadline_ = std::clamp(sorted[index] * margin_, min_s_, max_s_);
}

}  // namespace coded
