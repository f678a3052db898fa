// The coded_ensemble scheduler's decisions, without Triton. Run with a test's name, or
// without arguments to run them all.
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "config.h"
#include "core.h"
#include "fastpath.h"

using namespace coded;

namespace {

int failures = 0;
std::map<std::string, std::function<void()>>& tests() {
  static std::map<std::string, std::function<void()>> all;
  return all;
}
struct Register {
  Register(const char* name, std::function<void()> body) { tests()[name] = std::move(body); }
};

#define TEST(name)                              \
  void name();                                  \
  const Register register_##name(#name, name);  \
  void name()
#define CHECK(condition)                                                                 \
  do {                                                                                   \
    if (!(condition)) {                                                                  \
      std::fprintf(stderr, "%s:%d: failed: %s\n", __FILE__, __LINE__, #condition);      \
      ++failures;                                                                        \
    }                                                                                    \
  } while (0)

const CodeShape kParm{2, 3, true, 2, false};          // k = 2, one parity worker
const CodeShape kBerrut{2, 3, false, 1, false};       // non-systematic, decodes from any one

std::vector<int> queries_of(const std::vector<Fill>& fills) {
  std::vector<int> queries;
  for (const Fill& fill : fills) queries.push_back(fill.query);
  return queries;
}

// A closed group of `n` queries that arrived at `now`.
Race group_of(const CodeShape& code, int n, double deadline, double timeout, double now, bool copies_now = false) {
  Race race(code, deadline, timeout, now);
  for (int q = 0; q < n; ++q) race.add_query(now);
  race.close(now, copies_now);
  return race;
}

// A task as the scheduler makes it: full groups in order, roles rotating on every worker.
Placement placement_under_test{kParm, false};
Task task(uint64_t group, int role, bool forced = false) {
  return {group, role, placement_under_test.preferred(group, role, 0), forced};
}

std::vector<int> workers_of(const std::vector<Assignment>& assignments) {
  std::vector<int> workers;
  for (const Assignment& a : assignments) workers.push_back(a.worker);
  return workers;
}

}  // namespace

TEST(group_spanning_executes_calls_originals_at_once_and_parity_on_the_kth_query) {
  Race race(kParm, 0.01, 1.0, 0);
  CHECK(race.add_query(0) == 0);
  Actions first = race.poll(0);
  CHECK((first.call == std::vector<int>{0}) && !first.finished);
  CHECK((queries_of(race.on_answer(0, true)) == std::vector<int>{0}));
  CHECK(!race.poll(0.001).finished);  // answered, but the group is open: it may still protect others
  CHECK(race.add_query(0.0015) == 1);
  race.close(0.0015, false);
  CHECK((race.poll(0.0015).call == std::vector<int>{1, 2}));  // the k-th original and the parity
  CHECK(race.padded_slots() == 0);
  race.on_answer(2, true);
  Actions late = race.poll(0.0115);  // original 1 passed its deadline: decoded from 0 and the parity
  CHECK(late.decode && (race.decode_mask() == std::vector<bool>{true, false, true}));
  std::vector<Fill> fills = race.on_decoded();
  CHECK(fills.size() == 1 && fills[0].query == 1 && fills[0].reconstructed);
  CHECK(race.poll(0.012).finished);
}

TEST(an_open_group_takes_no_new_query_while_one_of_its_originals_waits_for_a_worker) {
  const double never = std::numeric_limits<double>::infinity();
  Race race(kParm, 0.01, 1.0, 0);
  race.add_query(0);
  race.poll(0);  // every worker busy: original 0 waits in the queue
  CHECK(race.original_queued() && race.first_sent() == never);
  CHECK(race.may_join(true) && !race.may_join(false));  // rows of the same execute still fill it
  race.on_sent(0, 0.003);
  CHECK(!race.original_queued() && race.first_sent() == 0.003 && race.may_join(false));
  race.add_query(0.004);
  race.close(0.004, false);
  CHECK(!race.may_join(true));
}

TEST(group_closed_after_the_bound_hedges_its_lone_query) {
  Race race(kParm, 0.01, 1.0, 0);
  race.add_query(0);
  race.poll(0);
  race.close(0.002, false);  // no partner came: slot 1 holds a copy, kept in reserve
  CHECK(race.padded_slots() == 1 && race.slot_query(1) == 0);
  CHECK(race.state(1) == Call::Reserved && race.state(2) == Call::Skipped);
  CHECK(race.poll(0.005).call.empty());
  CHECK((race.poll(0.01).call == std::vector<int>{1}));  // the hedge, after the original's deadline
  CHECK((queries_of(race.on_answer(1, true)) == std::vector<int>{0}));
  Actions done = race.poll(0.012);
  CHECK(done.finished && (done.cancel == std::vector<int>{0}) && (race.late_roles(0.012) == std::vector<int>{0}));
}

TEST(lone_query_copy_goes_at_once_when_asked) {
  Race race = group_of(kParm, 1, 0.01, 1.0, 0, true);
  CHECK((race.poll(0).call == std::vector<int>{0, 1}));
  CHECK(race.state(2) == Call::Skipped);
}

TEST(one_copy_per_query_goes_at_once_the_others_wait_in_reserve) {
  const CodeShape k4{4, 5, true, 4, false};
  Race race = group_of(k4, 1, 0.01, 1.0, 0, true);
  CHECK((race.poll(0).call == std::vector<int>{0, 1}));
  CHECK(race.state(2) == Call::Reserved && race.state(3) == Call::Reserved && race.state(4) == Call::Skipped);
  race.on_failure(0, "boom");
  race.on_failure(1, "boom");
  CHECK((race.poll(0.001).call == std::vector<int>{2, 3}));
}

TEST(lone_query_answered_before_the_close_needs_nothing_more) {
  Race race(kParm, 0.01, 1.0, 0);
  race.add_query(0);
  race.poll(0);
  race.on_answer(0, true);
  race.close(0.002, false);
  Actions done = race.poll(0.002);
  CHECK(done.finished && done.call.empty() && done.cancel.empty());
}

TEST(padded_group_beside_a_coded_role_calls_everyone) {
  CodeShape k4{4, 5, true, 4, false};
  Race race = group_of(k4, 3, 0.01, 1.0, 0);
  CHECK((race.poll(0).call == std::vector<int>{0, 1, 2, 3, 4}) && race.slot_query(3) == 0);
  Race two = group_of(k4, 2, 0.01, 1.0, 0);  // slots 0 1 0 1: copies reserved, parity skipped
  CHECK((two.poll(0).call == std::vector<int>{0, 1}) && two.state(4) == Call::Skipped);
}

TEST(originals_answer_at_once) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  CHECK((race.poll(0).call == std::vector<int>{0, 1, 2}));
  CHECK((queries_of(race.on_answer(0, true)) == std::vector<int>{0}));
  CHECK(!race.poll(0.001).finished);
  CHECK((queries_of(race.on_answer(1, true)) == std::vector<int>{1}));
  Actions done = race.poll(0.002);
  CHECK(done.finished && !done.decode && done.errors.empty());
  CHECK((done.cancel == std::vector<int>{2}));  // the parity straggler is cancelled
}

TEST(a_deadline_counts_from_the_dispatch_unless_it_passed_in_the_queue) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);  // every role queued at 0
  race.poll(0);
  race.on_sent(0, 0.004);  // waited 4 ms for a worker: late from 14 ms
  race.on_sent(1, 0.0);
  race.on_sent(2, 0.011);  // already late in the queue: stays late
  CHECK((race.late_roles(0.012) == std::vector<int>{1, 2}));
  CHECK(!race.poll(0.012).decode);  // role 0 is still within its deadline
  CHECK((race.late_roles(0.014) == std::vector<int>{0, 1, 2}));
}

TEST(pure_race_decodes_as_soon_as_enough_are_in) {
  Race race = group_of(kParm, 2, 0.0, 1.0, 0);
  race.poll(0);
  race.on_answer(1, true);
  race.on_answer(2, true);
  CHECK(race.poll(0).decode);
}

TEST(failed_member_is_missing_at_once) {
  Race race = group_of(kParm, 2, 10.0, 20.0, 0);
  race.poll(0);
  race.on_answer(1, true);
  race.on_answer(2, true);
  race.on_failure(0, "member_0: unloaded");
  CHECK(race.poll(0.001).decode);
}

TEST(non_systematic_code_calls_at_close_and_always_decodes) {
  Race race(kBerrut, 0.01, 1.0, 0);
  race.add_query(0);
  CHECK(race.poll(0).call.empty());  // no originals: nothing to call before the group closes
  race.add_query(0);
  race.close(0, false);
  CHECK((race.poll(0).call == std::vector<int>{0, 1, 2}));
  CHECK(race.on_answer(0, true).empty());
  CHECK(!race.poll(0.001).decode);
  race.on_answer(1, true);
  race.on_answer(2, true);
  CHECK(race.poll(0.002).decode);
  std::vector<Fill> fills = race.on_decoded();
  CHECK(fills.size() == 2 && fills[0].reconstructed && fills[1].reconstructed);
}

TEST(non_finite_row_makes_its_role_missing) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  CHECK(race.on_answer(0, false).empty());
  race.on_answer(1, true);
  race.on_answer(2, true);
  CHECK(race.poll(0.001).decode && !race.decode_mask()[0]);
}

TEST(postprocess_decodes_originals_too) {
  CodeShape invnet{2, 3, true, 2, true};
  Race race = group_of(invnet, 2, 0.01, 1.0, 0);
  race.poll(0);
  CHECK(race.on_answer(0, true).empty() && race.on_answer(1, true).empty());
  CHECK(race.poll(0.001).decode);
  std::vector<Fill> fills = race.on_decoded();
  CHECK(fills.size() == 2 && !fills[0].reconstructed && !fills[1].reconstructed);
}

TEST(reserve_is_called_when_the_lone_original_errors) {
  Race race = group_of(kParm, 1, 0.01, 1.0, 0);
  race.poll(0);
  race.on_failure(0, "boom");
  CHECK((race.poll(0.001).call == std::vector<int>{1}));
  CHECK((queries_of(race.on_answer(1, true)) == std::vector<int>{0}));
  CHECK(race.poll(0.002).finished);
}

TEST(held_back_role_is_a_reserve_called_when_the_others_cannot_decode) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  race.on_held_back(2, "suspended after 1 consecutive misses");
  race.on_answer(1, true);
  CHECK(race.poll(0.001).call.empty());
  race.on_failure(0, "boom");
  CHECK((race.poll(0.002).call == std::vector<int>{2}));
}

TEST(held_back_original_is_decoded_at_once) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  race.on_held_back(0, "suspended");
  race.on_answer(1, true);
  race.on_answer(2, true);
  CHECK(race.poll(0.001).decode);  // no deadline wait
}

TEST(unanswerable_queries_get_an_error_at_the_timeout) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  race.on_answer(1, true);
  Actions waiting = race.poll(0.5);
  CHECK(waiting.errors.empty() && waiting.wakeup == 1.0);
  Actions timeout = race.poll(1.0);
  CHECK(timeout.errors.size() == 1 && timeout.errors[0].first == 0 && timeout.finished);
  CHECK(timeout.errors[0].second ==
        "no answer and no reconstruction possible (role 0: no answer in time; role 2: no answer in time)");
}

TEST(a_failed_original_nothing_else_can_recover_is_retried_once_then_fails_at_once) {
  Race race = group_of(kParm, 2, 10.0, 20.0, 0);
  race.poll(0);
  race.on_answer(1, true);
  race.on_failure(0, "member_0: unloaded");
  race.on_failure(2, "parity: error");
  Actions retry = race.poll(0.001);
  CHECK((retry.call == std::vector<int>{0}) && retry.errors.empty());
  race.on_failure(0, "member_1: unloaded");
  Actions actions = race.poll(0.002);
  CHECK(actions.errors.size() == 1 && actions.finished);
  CHECK(actions.errors[0].second.find("role 0: member_1: unloaded; role 2: parity: error") != std::string::npos);
}

TEST(a_failed_original_is_not_retried_while_the_code_can_still_recover_it) {
  const CodeShape k4{4, 5, true, 4, false};
  Race race = group_of(k4, 4, 10.0, 20.0, 0);
  race.poll(0);
  race.on_failure(0, "member_0: unloaded");
  CHECK(race.poll(0.001).call.empty());  // the parity and the other originals may still decode it
  race.on_failure(1, "member_0: unloaded");
  // two lost, more than the parity recovers: one retry makes the group decodable again
  CHECK((race.poll(0.002).call == std::vector<int>{0}));
  for (int role : {0, 2, 3, 4}) race.on_answer(role, true);
  CHECK(race.poll(0.003).decode);
  CHECK((queries_of(race.on_decoded()) == std::vector<int>{1}));
}

TEST(a_stuck_original_nothing_else_can_stand_in_for_is_hedged_once) {
  // both originals on a worker that stopped answering; the parity answered
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  for (int role : {0, 1, 2}) race.on_sent(role, 0);
  race.on_answer(2, true);
  Actions waiting = race.poll(0.005);
  CHECK(waiting.call.empty() && waiting.wakeup == 0.01);
  // one hedge is enough: its answer and the parity decode the other query
  Actions hedge = race.poll(0.01);
  CHECK((hedge.call == std::vector<int>{0}) && race.calls(0) == 2);
  race.on_sent(0, 0.01);
  race.on_failure(0, "member_0: the stuck call failed");  // the hedge still runs
  CHECK(race.state(0) == Call::Pending && race.calls(0) == 1);
  CHECK((queries_of(race.on_answer(0, true)) == std::vector<int>{0}));
  Actions decode = race.poll(0.012);
  CHECK(decode.decode && (race.decode_mask() == std::vector<bool>{true, false, true}));
  CHECK(race.poll(0.03).call.empty());  // once per role
  // an original that failed waits for a stuck one (which may yet answer); the stuck one is hedged
  Race failed = group_of(kParm, 2, 0.01, 1.0, 0);
  failed.poll(0);
  for (int role : {0, 1, 2}) failed.on_sent(role, 0);
  failed.on_failure(0, "member_0: unloaded");
  failed.on_answer(2, true);
  CHECK((failed.poll(0.01).call == std::vector<int>{1}));
}

TEST(a_stuck_original_is_not_hedged_while_the_parity_may_still_stand_in) {
  Race race = group_of(kParm, 2, 0.01, 1.0, 0);
  race.poll(0);
  race.on_sent(0, 0);
  race.on_sent(1, 0);
  race.on_answer(1, true);
  race.on_sent(2, 0.011);  // the parity waited in the queue
  CHECK(race.poll(0.015).call.empty());
  CHECK(race.poll(0.03).call.empty());  // a late parity is only late: it never shares the original's worker
  race.on_failure(2, "parity: error");
  CHECK((race.poll(0.031).call == std::vector<int>{0}));
  Race pure = group_of(kParm, 2, 0.0, 1.0, 0);  // ParM's pure race has no deadline to be stuck past
  pure.poll(0);
  for (int role : {0, 1, 2}) pure.on_sent(role, 0);
  pure.on_answer(1, true);
  CHECK(pure.poll(0.5).call.empty());
}

// A dispatcher over kParm's three workers (one call in flight each, batches of up to 8), with its own
// health and lists of held-back and unplaceable tasks; it sets placement_under_test, which task() reads.
struct Queue {
  explicit Queue(Placement placement, int suspend_after = 3)
      : health(3, suspend_after, 1.0), dispatcher((placement_under_test = placement), 1, 8, &health) {}
  std::vector<Assignment> next(double now) { return dispatcher.next(now, held, unplaceable); }
  MemberHealth health;
  Dispatcher dispatcher;
  std::vector<Task> held, unplaceable;
};

TEST(dispatcher_never_puts_two_tasks_of_a_group_on_one_worker) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(7, 0));
  dispatcher.push(task(7, 1));
  dispatcher.push(task(7, 2));
  dispatcher.promote(7);  // its parity is needed now: it takes the last free worker
  std::vector<Assignment> first = q.next(0);
  CHECK(first.size() == 3);
  std::vector<int> workers = workers_of(first);
  std::sort(workers.begin(), workers.end());
  CHECK((workers == std::vector<int>{0, 1, 2}));
  // a reserve of the same group waits while every worker runs one of its tasks, for the first that answers
  dispatcher.push(task(7, 1, true));
  CHECK(q.next(0).empty() && q.unplaceable.empty());
  dispatcher.returned(first[1].worker);
  dispatcher.answered(7, first[1].worker);
  std::vector<Assignment> after = q.next(0);
  CHECK(after.size() == 1 && after[0].worker == first[1].worker);
}

TEST(a_task_whose_every_worker_failed_its_group_is_unplaceable) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  for (int role = 0; role < 3; ++role) dispatcher.push(task(7, role));
  dispatcher.promote(7);
  for (const Assignment& a : q.next(0)) {
    dispatcher.returned(a.worker);
    dispatcher.failed(7, a.worker);
  }
  dispatcher.push(task(7, 1, true));
  CHECK(q.next(0).empty() && q.unplaceable.size() == 1);
}

TEST(a_worker_that_answered_a_groups_task_may_take_another) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  std::vector<Assignment> first = q.next(0);
  dispatcher.push(task(2, 0));
  dispatcher.push(task(3, 0));
  std::vector<Assignment> others = q.next(0);  // the other two workers busy with other groups
  CHECK(first.size() == 1 && others.size() == 2);
  dispatcher.returned(first[0].worker);
  dispatcher.push(task(1, 1));
  CHECK(q.next(0).empty() && q.unplaceable.empty());  // its worker still counts as running group 1's task
  dispatcher.answered(1, first[0].worker);
  std::vector<Assignment> next = q.next(0);
  CHECK(next.size() == 1 && next[0].worker == first[0].worker && next[0].tasks[0].group == 1);
}

TEST(full_groups_keep_their_order_in_one_call_per_worker) {
  Queue q(Placement{kParm, false});
  Dispatcher& dispatcher = q.dispatcher;
  for (uint64_t g = 0; g < 3; ++g)
    for (int role = 0; role < 3; ++role) dispatcher.push(task(g, role));
  std::vector<Assignment> calls = q.next(0);
  CHECK((workers_of(calls) == std::vector<int>{0, 1, 2}));
  for (const Assignment& call : calls) {
    CHECK(call.tasks.size() == 3);
    for (const Task& t : call.tasks) CHECK(t.role == call.worker);
  }
  Placement dedicated{kParm, false};
  CHECK(dedicated.preferred(5, 0, 1) == 1 && dedicated.preferred(5, 1, 1) == 0 && dedicated.preferred(5, 2, 1) == 2);
}

TEST(late_binding_hands_a_task_to_the_worker_that_frees_first) {
  Queue q(Placement{kParm, false});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(2, 1));
  CHECK(q.next(0).size() == 2);  // both data workers busy now
  dispatcher.push(task(3, 0));
  dispatcher.push(task(4, 0));
  CHECK(q.next(0).empty());  // queued, not bound to a busy worker
  dispatcher.returned(1);
  std::vector<Assignment> next = q.next(0);
  // worker 1 freed first: it takes both queued tasks in one call (they are of different groups)
  CHECK(next.size() == 1 && next[0].worker == 1 && next[0].tasks.size() == 2);
  CHECK(next[0].tasks[0].group == 3 && next[0].tasks[1].group == 4);
}

TEST(pinned_roles_wait_for_their_own_member) {
  Queue q(Placement{kParm, false, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  CHECK(workers_of(q.next(0)) == std::vector<int>{0});
  dispatcher.push(task(2, 0));  // member 1 is free, but role 0 runs only on member 0
  CHECK(q.next(0).empty());
  dispatcher.returned(0);
  CHECK(workers_of(q.next(0)) == std::vector<int>{0});
  CHECK(!placement_under_test.runs(1, 0) && placement_under_test.runs(1, 1) && placement_under_test.runs(2, 2));
}

TEST(dedicated_placement_keeps_parity_on_its_worker) {
  Queue q(Placement{kParm, false});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 2));
  dispatcher.push(task(1, 0));
  std::vector<Assignment> a = q.next(0);
  CHECK(a.size() == 2 && a[0].worker < 2 && a[1].worker == 2);
  dispatcher.push(task(2, 0));  // the other data worker, not the busy parity one
  std::vector<Assignment> b = q.next(0);
  CHECK(b.size() == 1 && b[0].worker == 1 - a[0].worker);
}

TEST(originals_go_before_coded_tasks_queued_earlier) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(1, 1));
  std::vector<Assignment> originals = q.next(0);
  CHECK(originals.size() == 2);  // one worker left free
  dispatcher.push(task(1, 2));  // group 1's parity, then a new query's original
  dispatcher.push(task(2, 0));
  std::vector<Assignment> free_worker = q.next(0);
  CHECK(free_worker.size() == 1 && free_worker[0].tasks.size() == 1 && free_worker[0].tasks[0].group == 2);
  dispatcher.returned(free_worker[0].worker);
  CHECK(q.next(0).empty());  // one free worker stays free for queries
  dispatcher.returned(originals[0].worker);
  std::vector<Assignment> then = q.next(0);  // the parity, once two are free
  CHECK(then.size() == 1 && then[0].tasks[0].group == 1 && then[0].tasks[0].role == 2);
}

TEST(unneeded_redundancy_leaves_a_worker_free_for_the_next_query) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(1, 1));
  dispatcher.push(task(1, 2));
  CHECK(q.next(0).size() == 2);  // the parity would take the last free worker
  dispatcher.returned(0);
  dispatcher.returned(1);
  std::vector<Assignment> later = q.next(0);  // two free: one takes it
  CHECK(later.size() == 1 && later[0].tasks[0].role == 2);
  dispatcher.forget(1);
  Queue dedicated(Placement{kParm, false});
  dedicated.dispatcher.push(task(2, 0));
  dedicated.dispatcher.push(task(2, 1));
  dedicated.dispatcher.push(task(2, 2));
  CHECK(dedicated.next(0).size() == 3);  // a parity worker serves no originals
}

TEST(a_copy_padding_a_partial_group_waits_like_a_parity_until_the_group_needs_it) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(2, 0));
  CHECK(q.next(0).size() == 2);  // one worker left free
  Task copy = task(1, 1);
  copy.copy = true;
  dispatcher.push(copy);
  CHECK(q.next(0).empty());  // the copy would take the last free worker
  dispatcher.promote(1);     // group 1's original is late: now its copy is what may answer it
  std::vector<Assignment> then = q.next(0);
  CHECK(then.size() == 1 && then[0].tasks[0].group == 1 && then[0].tasks[0].copy);
}

TEST(a_promoted_groups_coded_task_goes_with_the_originals) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(1, 1));
  CHECK(q.next(0).size() == 2);
  dispatcher.push(task(1, 2));  // group 1's parity: one of its originals is late
  dispatcher.push(task(2, 0));
  dispatcher.promote(1);
  std::vector<Assignment> free_worker = q.next(0);
  CHECK(free_worker.size() == 1 && free_worker[0].tasks[0].group == 1 && free_worker[0].tasks[0].role == 2);
}

TEST(a_group_needs_its_coded_roles_once_an_original_is_late_or_failed) {
  Race late = group_of(kParm, 2, 0.010, 1.0, 0);
  late.poll(0);
  CHECK(!late.needs_coded(0.005));
  CHECK(late.needs_coded(0.010));  // role 0 and 1 pending past the 10 ms deadline
  late.on_answer(0, true);
  late.on_answer(1, true);
  CHECK(!late.needs_coded(0.020));
  Race failed = group_of(kParm, 2, 0.010, 1.0, 0);
  failed.poll(0);
  failed.on_failure(1, "member_1: unloaded");
  CHECK(failed.needs_coded(0.001));
}

TEST(every_worker_roles_rotate_over_all_workers) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  std::vector<int> parity_on(3, 0), lone_on(3, 0);
  for (uint64_t g = 0; g < 6; ++g) {
    dispatcher.push(task(g, 0));
    dispatcher.push(task(g, 1));
    dispatcher.push(task(g, 2));
    dispatcher.promote(g);
    for (const Assignment& a : q.next(0)) {
      if (a.tasks[0].role == 2) ++parity_on[a.worker];
      dispatcher.returned(a.worker);
    }
    dispatcher.forget(g);
  }
  CHECK((parity_on == std::vector<int>{2, 2, 2}));  // the parity role takes turns
  for (uint64_t g = 10; g < 16; ++g) {  // lone queries: the least loaded of all k + 1
    dispatcher.push(task(g, 0));
    for (const Assignment& a : q.next(0)) {
      ++lone_on[a.worker];
      dispatcher.returned(a.worker);
    }
  }
  CHECK((lone_on == std::vector<int>{2, 2, 2}));
  dispatcher.push(task(20, 0));
  dispatcher.push(task(21, 0));
  std::vector<Assignment> busy = q.next(0);
  dispatcher.push(task(22, 0));
  std::vector<Assignment> third = q.next(0);
  CHECK(third.size() == 1 && third[0].worker != busy[0].worker && third[0].worker != busy[1].worker);
}

TEST(every_worker_a_worker_runs_one_of_its_models_at_a_time) {
  // as one device: a worker busy with an original takes no parity call until it returns
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  dispatcher.push(task(2, 0));
  std::vector<Assignment> originals = q.next(0);
  CHECK(originals.size() == 2);
  const int busy = originals[0].worker, free = 3 - originals[0].worker - originals[1].worker;
  Task parity = task(3, 2);
  parity.preferred = busy;
  dispatcher.push(parity);
  dispatcher.promote(3);
  std::vector<Assignment> next = q.next(0);
  CHECK(next.size() == 1 && next[0].worker == free);
  dispatcher.push(task(4, 2));
  dispatcher.promote(4);
  CHECK(q.next(0).empty());  // every worker runs a call: the parity waits
  dispatcher.returned(busy);
  next = q.next(0);
  CHECK(next.size() == 1 && next[0].worker == busy && next[0].tasks[0].role == 2);
}

TEST(dispatcher_holds_back_tasks_of_suspended_workers_and_probes) {
  Queue q(Placement{kParm, false}, 1);
  q.health.missed(2, 0);
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 2));
  CHECK(q.next(0.1).empty() && q.held.size() == 1);
  dispatcher.push(task(1, 2, true));  // called as a reserve: whatever the breaker says
  CHECK(q.next(0.2).size() == 1);
  dispatcher.returned(2);
  dispatcher.push(task(2, 2));
  CHECK(q.next(1.0).size() == 1);  // the probe
  dispatcher.returned(2);
  dispatcher.push(task(3, 2));
  CHECK(q.next(1.1).empty() && q.held.size() == 2);
}

TEST(with_fewer_healthy_workers_than_roles_every_worker_originals_share_a_worker) {
  Queue q(Placement{kParm, true}, 1);
  q.health.missed(0, 0);  // worker 0 suspended: two healthy workers for three roles
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(9, 0));
  std::vector<Assignment> busy = q.next(0.1);
  CHECK(busy.size() == 1 && busy[0].worker != 0);
  dispatcher.push(task(1, 0));
  dispatcher.push(task(1, 1));
  // both originals go to the one free healthy worker rather than one waiting for the busy one
  std::vector<Assignment> next = q.next(0.1);
  CHECK(next.size() == 1 && next[0].worker == 3 - busy[0].worker && next[0].tasks.size() == 2);
  // a copy of a query never shares a worker with its group: on the same worker it would hedge nothing
  dispatcher.returned(busy[0].worker);
  Task copy = task(2, 1);
  copy.copy = true;
  dispatcher.push(task(2, 0));
  dispatcher.push(copy);
  std::vector<Assignment> split = q.next(0.2);
  CHECK(split.size() == 1 && split[0].tasks.size() == 1 && split[0].tasks[0].role == 0);
  // dedicated placement keeps the rule: the parity worker can still decode the other query
  Queue dedicated(Placement{kParm, false}, 1);
  dedicated.health.missed(0, 0);
  dedicated.dispatcher.push(task(1, 0));
  dedicated.dispatcher.push(task(1, 1));
  std::vector<Assignment> one = dedicated.next(0.1);
  CHECK(one.size() == 1 && one[0].worker == 1 && one[0].tasks.size() == 1 && dedicated.held.size() == 1);
}

TEST(a_probe_takes_one_task_of_a_group_and_no_task_goes_back_to_a_worker_that_failed_its_group) {
  Queue q(Placement{kParm, true}, 1);
  q.health.missed(0, 0);    // probe due at 1.0
  q.health.missed(1, 1.2);  // suspended until 2.2
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(8, 2));
  CHECK(workers_of(q.next(1.5)) == std::vector<int>{2});
  dispatcher.push(task(4, 0));
  dispatcher.push(task(4, 1));
  std::vector<Assignment> probe = q.next(1.5);  // one healthy worker for three roles: originals may share
  CHECK(probe.size() == 1 && probe[0].worker == 0 && probe[0].tasks.size() == 1);  // but not on a probe
  dispatcher.returned(0);
  dispatcher.failed(4, 0);
  dispatcher.returned(2);
  CHECK(workers_of(q.next(1.6)) == std::vector<int>{2});
  dispatcher.push(task(4, 0, true));  // a reserve: whatever the breaker says, but not where its group failed
  CHECK(workers_of(q.next(1.6)) == std::vector<int>{1});
}

TEST(an_immediate_copy_leaves_a_worker_idle_for_the_next_query) {
  Queue q(Placement{kParm, true});
  Dispatcher& dispatcher = q.dispatcher;
  dispatcher.push(task(1, 0));
  q.next(0);
  CHECK(dispatcher.spare_worker_for(1, 1, 0));  // two workers idle: one takes the copy, one stays free
  dispatcher.push(task(2, 0));
  q.next(0);
  CHECK(!dispatcher.spare_worker_for(1, 1, 0));  // one idle: the copy waits in reserve
  Queue dedicated(Placement{kParm, false});
  dedicated.dispatcher.push(task(3, 0));
  dedicated.next(0);
  CHECK(!dedicated.dispatcher.spare_worker_for(3, 1, 0));  // the other data worker is the only one left for originals
}

TEST(adaptive_deadline_is_a_percentile_times_a_margin_within_bounds) {
  AdaptiveDeadline deadline(0.001, 0.010, 95, 1.5, 100);
  CHECK(deadline.deadline() == 0.010);  // too few calls to say
  for (int i = 0; i < 100; ++i) deadline.record(i < 95 ? 0.002 : 0.050);
  CHECK(std::fabs(deadline.deadline() - 0.010) < 1e-12);  // p95 = 0.05 * 1.5, capped at the max
  for (int i = 0; i < 100; ++i) deadline.record(0.002 + (i % 10) * 0.0001);  // the window forgets the slow ones
  CHECK(std::fabs(deadline.deadline() - 0.0029 * 1.5) < 1e-9);
  for (int i = 0; i < 100; ++i) deadline.record(0.0001);
  CHECK(deadline.deadline() == 0.001);  // never below the min
}

TEST(circuit_breaker_suspends_probes_and_recovers) {
  MemberHealth health(3, 2, 1.0);
  health.missed(0, 0);
  CHECK(health.callable(0, 0));
  health.missed(0, 0);
  CHECK(!health.callable(0, 0.5));
  CHECK(health.callable(0, 1.0));   // one probe
  CHECK(!health.callable(0, 1.1));  // and no second one before the interval
  health.answered(0);
  CHECK(health.callable(0, 1.2));
  CHECK(health.callable(1, 0) && health.callable(2, 0));
}

TEST(fast_paths_sum_subtract_and_check_rows) {
  float a[2] = {1, 2}, b[2] = {3, 5}, out[2];
  sum_rows({a, b}, 2, out);
  CHECK(out[0] == 4 && out[1] == 7);
  float parity[2] = {10, 10};
  subtract_missing({b}, parity, 1.0f, 2, out);
  CHECK(out[0] == 7 && out[1] == 5);
  float bad[2] = {1, NAN};
  double inf[1] = {INFINITY};
  CHECK(row_finite(a, 2, "FP32") && !row_finite(bad, 2, "FP32") && !row_finite(inf, 1, "FP64"));
  CHECK(row_finite(bad, 2, "INT32"));
}

const char* kConfig = R"({"name": "parm", "max_batch_size": 8,
  "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["1", "28", "28"]}],
  "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]},
             {"name": "reconstructed", "data_type": "TYPE_BOOL", "dims": [1]}],
  "parameters": {"members": {"string_value": "a,b,p"}, "k": {"string_value": "2"},
    "systematic": {"string_value": "true"}, "min_available": {"string_value": "2"},
    "member_output": {"string_value": "{\"name\": \"logits\", \"dtype\": \"FP32\", \"dims\": [10]}"},
    "encoder": {"string_value": "sum"}, "decoder": {"string_value": "subtract"},
    "deadline_ms": {"string_value": "10.0"}, "MIN": {"string_value": "x"}}})";

std::string load_error(const std::string& from, const std::string& to) {
  std::string text = kConfig;
  if (text.find(from) == std::string::npos) return "no '" + from + "' in the test config";
  text.replace(text.find(from), from.size(), to);
  try {
    EnsembleConfig::from_model_config(text);
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "";
}

TEST(config_is_read_and_checked) {
  EnsembleConfig config = EnsembleConfig::from_model_config(kConfig);
  CHECK(config.num_workers() == 3 && config.num_coded() == 1 && config.deadline_s == 0.01);
  CHECK(config.input.row_bytes() == 28 * 28 * 4 && config.timeout_s == 5.0);
  CHECK(load_error("\"k\": {\"string_value\": \"2\"}", "\"k\": {\"string_value\": \"4\"}").find("'k'") !=
        std::string::npos);
  CHECK(load_error("\"sum\"", "\"xor\"").find("'encoder'") != std::string::npos);
  CHECK(load_error("\"10.0\"", "\"soon\"").find("'deadline_ms'") != std::string::npos);
  CHECK(load_error("\"min_available\": {\"string_value\": \"2\"}", "\"min_available\": {\"string_value\": \"1\"}")
            .find("'decoder'") != std::string::npos);
  CHECK(load_error("\"members\"", "\"memberz\"").find("'members'") != std::string::npos);
  CHECK(load_error("\"max_batch_size\": 8", "\"max_batch_size\": 0").find("max_batch_size") != std::string::npos);
}

int main(int argc, char** argv) {
  for (const auto& [name, body] : tests()) {
    if (argc > 1 && name != argv[1]) continue;
    body();
    std::printf("%s\n", name.c_str());
  }
  return failures ? 1 : 0;
}
