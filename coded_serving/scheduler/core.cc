#include "core.h"

#include <algorithm>

namespace coded {

Layout Layout::for_queries(int num_queries, int k) {
  Layout layout;
  layout.k = k;
  layout.num_queries = num_queries;
  int groups = (num_queries + k - 1) / k;
  int tail = num_queries - (groups - 1) * k;
  for (int g = 0; g < groups; ++g)
    for (int i = 0; i < k; ++i)
      layout.slots.push_back(g < groups - 1 ? g * k + i : (groups - 1) * k + i % tail);
  return layout;
}

int Layout::min_copies() const {
  std::vector<int> copies(num_queries, 0);
  for (int query : slots) ++copies[query];
  return *std::min_element(copies.begin(), copies.end());
}

MemberHealth::MemberHealth(int workers, int suspend_after, double probe_interval_s)
    : suspend_after_(suspend_after), probe_interval_s_(probe_interval_s), misses_(workers), next_probe_(workers) {}

bool MemberHealth::callable(int worker, double now) {
  if (suspend_after_ <= 0 || misses_[worker] < suspend_after_) return true;
  if (now < next_probe_[worker]) return false;
  next_probe_[worker] = now + probe_interval_s_;
  return true;
}

void MemberHealth::answered(int worker) { misses_[worker] = 0; }

void MemberHealth::missed(int worker, double now) {
  if (++misses_[worker] == suspend_after_) next_probe_[worker] = now + probe_interval_s_;
}

Plan Planner::plan(const Layout& layout, double now) {
  Plan plan;
  if (!(code_.systematic && layout.min_copies() > code_.num_coded())) {
    for (int w = 0; w < code_.num_workers; ++w) plan.called.push_back(w);
  } else {
    ++turn_;
    for (int query = 0; query < layout.num_queries; ++query) {
      std::vector<int> holders;
      for (int slot = 0; slot < code_.k; ++slot)
        if (layout.at(0, slot) == query) holders.push_back(slot);
      std::rotate(holders.begin(), holders.begin() + turn_ % holders.size(), holders.end());
      plan.called.push_back(*std::min_element(holders.begin(), holders.end(),
                                              [&](int a, int b) { return in_flight_[a] < in_flight_[b]; }));
    }
    for (int w = 0; w < code_.k; ++w)
      if (std::find(plan.called.begin(), plan.called.end(), w) == plan.called.end()) plan.reserved.push_back(w);
  }
  for (int worker : std::vector<int>(plan.called)) {
    if (health_->callable(worker, now)) continue;
    plan.called.erase(std::find(plan.called.begin(), plan.called.end(), worker));
    plan.reasons[worker] = "suspended after " + std::to_string(health_->suspend_after()) + " consecutive misses";
    // a copy of the same query, on a member in good health
    auto stand_in = std::find_if(plan.reserved.begin(), plan.reserved.end(), [&](int r) {
      return layout.at(0, r) == layout.at(0, worker) && health_->callable(r, now);
    });
    if (stand_in != plan.reserved.end()) {
      plan.called.push_back(*stand_in);
      plan.reserved.erase(stand_in);
    }
    plan.reserved.push_back(worker);
  }
  return plan;
}

Race::Race(CodeShape code, Layout layout, const Plan& plan, double deadline_s, double timeout_s, double now)
    : code_(code),
      layout_(std::move(layout)),
      deadline_s_(deadline_s),
      timeout_(now + std::max(timeout_s, deadline_s)),
      now_(now),
      state_(code.num_workers, Call::Skipped),
      deadline_(code.num_workers, now),
      reasons_(code.num_workers),
      available_(layout_.groups() * code.num_workers, false),
      decoding_(layout_.groups(), false),
      answered_(layout_.num_queries, false),
      failed_(layout_.num_queries, false),
      reconstructed_(layout_.num_queries, false) {
  for (int w : plan.reserved) state_[w] = Call::Reserved;
  for (const auto& [w, reason] : plan.reasons) reasons_[w] = reason;
  for (int w : plan.called) call(w);
}

void Race::call(int worker) {
  state_[worker] = Call::Pending;
  deadline_[worker] = now_ + deadline_s_;
  reasons_[worker].clear();
  to_call_.push_back(worker);
}

std::vector<Fill> Race::on_answer(int worker, const std::vector<bool>& usable) {
  std::vector<Fill> fills;
  if (state_[worker] != Call::Pending) return fills;
  state_[worker] = Call::Answered;
  for (int g = 0; g < layout_.groups(); ++g) {
    available_[g * code_.num_workers + worker] = usable[g];
    bool original = usable[g] && code_.systematic && worker < code_.k && !code_.postprocess;
    int query = original ? layout_.at(g, worker) : -1;
    if (original && !resolved(query)) {
      answered_[query] = true;
      fills.push_back({query, g, worker, false});
    }
  }
  return fills;
}

void Race::on_failure(int worker, const std::string& reason) {
  if (state_[worker] != Call::Pending) return;
  state_[worker] = Call::Failed;
  reasons_[worker] = reason;
}

std::vector<Fill> Race::on_decoded(const std::vector<int>& groups) {
  std::vector<Fill> fills;
  for (int g : groups) {
    const std::vector<bool>& mask = decode_mask_.at(g);
    for (int slot = 0; slot < code_.k; ++slot) {
      int query = layout_.at(g, slot);
      if (resolved(query)) continue;
      bool original = false;
      for (int i = 0; i < code_.k && code_.systematic; ++i) original |= layout_.at(g, i) == query && mask[i];
      answered_[query] = true;
      reconstructed_[query] = !original;
      fills.push_back({query, g, slot, !original});
    }
  }
  return fills;
}

void Race::on_decode_failed(const std::vector<int>& groups, const std::string& reason) {
  for (int g : groups)
    for (int slot = 0; slot < code_.k; ++slot) {
      int query = layout_.at(g, slot);
      if (resolved(query)) continue;
      failed_[query] = true;
      errors_.emplace_back(query, reason);
    }
}

bool Race::settled(int worker) const { return state_[worker] != Call::Pending || now_ >= deadline_[worker]; }

bool Race::decodable(int group) const {
  int count = 0;
  for (int w = 0; w < code_.num_workers; ++w) {
    if (!settled(w)) return false;
    count += available(group, w);
  }
  return count >= code_.min_available;
}

bool Race::has_original(int group, int query) const {
  for (int slot = 0; slot < code_.k && code_.systematic; ++slot)
    if (layout_.at(group, slot) == query && available(group, slot)) return true;
  return false;
}

bool Race::all_originals(int group) const {
  for (int slot = 0; slot < code_.k; ++slot)
    if (!has_original(group, layout_.at(group, slot))) return false;
  return true;
}

bool Race::needs_decode(int group) const {
  if (code_.postprocess) return all_originals(group) || decodable(group);
  return !all_originals(group) && decodable(group);
}

bool Race::group_resolved(int group) const {
  for (int slot = 0; slot < code_.k; ++slot)
    if (!resolved(layout_.at(group, slot))) return false;
  return true;
}

bool Race::wants_reserves() const {
  bool any_reserved = false, any_pending = false, any_missing = false;
  for (int w = 0; w < code_.num_workers; ++w) {
    any_reserved |= state_[w] == Call::Reserved;
    any_pending |= state_[w] == Call::Pending;
    any_missing |= state_[w] == Call::Failed || (state_[w] == Call::Pending && now_ >= deadline_[w]);
  }
  if (!any_reserved) return false;
  for (int g = 0; g < layout_.groups(); ++g) {
    if (decoding_[g] || group_resolved(g) || all_originals(g) || decodable(g)) continue;
    bool row_lost = false;
    for (int w = 0; w < code_.num_workers; ++w) row_lost |= state_[w] == Call::Answered && !available(g, w);
    if (any_missing || row_lost || !any_pending) return true;
  }
  return false;
}

std::string Race::failure_message(int group) const {
  std::string reasons;
  for (int w = 0; w < code_.num_workers; ++w) {
    if (state_[w] == Call::Skipped || available(group, w)) continue;
    std::string why = !reasons_[w].empty()           ? reasons_[w]
                      : state_[w] == Call::Answered ? "returned non-finite values"
                                                    : "no answer in time";
    reasons += (reasons.empty() ? "" : "; ") + ("worker " + std::to_string(w) + ": " + why);
  }
  return "no answer and no reconstruction possible (" + reasons + ")";
}

Actions Race::poll(double now) {
  Actions actions;
  now_ = now;
  if (finished_) return actions;
  if (wants_reserves()) {
    for (int w = 0; w < code_.num_workers; ++w)
      if (state_[w] == Call::Reserved) call(w);
    timeout_ = std::max(timeout_, now_ + deadline_s_);
  }
  actions.call.swap(to_call_);
  bool any_pending = false;
  for (int w = 0; w < code_.num_workers; ++w) any_pending |= state_[w] == Call::Pending;
  for (int g = 0; g < layout_.groups(); ++g) {
    if (group_resolved(g)) continue;
    if (!decoding_[g] && needs_decode(g)) {
      decoding_[g] = true;
      std::vector<bool>& mask = decode_mask_[g];
      for (int w = 0; w < code_.num_workers; ++w) mask.push_back(available(g, w));
      actions.decode.push_back(g);
    } else if (now_ >= timeout_ || (!decoding_[g] && !any_pending)) {
      on_decode_failed({g}, failure_message(g));
    }
  }
  actions.errors.swap(errors_);
  bool all_resolved = true;
  for (int q = 0; q < layout_.num_queries; ++q) all_resolved &= resolved(q);
  if (all_resolved) {
    finished_ = actions.finished = true;
    for (int w = 0; w < code_.num_workers; ++w)
      if (state_[w] == Call::Pending) actions.cancel.push_back(w);
    return actions;
  }
  for (int w = 0; w < code_.num_workers; ++w)
    if (state_[w] == Call::Pending && deadline_[w] > now_) actions.wakeup = std::min(actions.wakeup, deadline_[w]);
  actions.wakeup = std::min(actions.wakeup, timeout_);
  return actions;
}

std::vector<int> Race::late_workers(double now) const {
  std::vector<int> late;
  for (int w = 0; w < code_.num_workers; ++w)
    if (state_[w] == Call::Pending && now >= deadline_[w]) late.push_back(w);
  return late;
}

}  // namespace coded
