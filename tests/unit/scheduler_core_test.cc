// The coded_ensemble scheduler's decisions, without Triton. Run with a test's name, or
// without arguments to run them all.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
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
const std::vector<bool> kUsable(8, true);

std::vector<int> queries_of(const std::vector<Fill>& fills) {
  std::vector<int> queries;
  for (const Fill& fill : fills) queries.push_back(fill.query);
  return queries;
}

Plan everyone(int workers) {
  Plan plan;
  for (int w = 0; w < workers; ++w) plan.called.push_back(w);
  return plan;
}

}  // namespace

TEST(layout_pads_a_partial_group_with_its_own_queries) {
  Layout five = Layout::for_queries(5, 2);
  CHECK((five.slots == std::vector<int>{0, 1, 2, 3, 4, 4}));
  CHECK(five.groups() == 3 && five.padded_slots() == 1 && five.min_copies() == 1);
  Layout three = Layout::for_queries(3, 4);
  CHECK((three.slots == std::vector<int>{0, 1, 2, 0}));
  CHECK(Layout::for_queries(1, 2).min_copies() == 2);
  CHECK(Layout::for_queries(4, 2).padded_slots() == 0);
}

TEST(full_groups_call_every_worker) {
  MemberHealth health(3, 3, 1.0);
  Planner planner(kParm, &health);
  Plan plan = planner.plan(Layout::for_queries(2, 2), 0);
  CHECK((plan.called == std::vector<int>{0, 1, 2}) && plan.reserved.empty());
  plan = planner.plan(Layout::for_queries(3, 2), 0);  // a padded group beside a full one
  CHECK(plan.called.size() == 3);
}

TEST(lone_query_goes_to_one_data_worker_taking_turns) {
  MemberHealth health(3, 3, 1.0);
  Planner planner(kParm, &health);
  Layout lone = Layout::for_queries(1, 2);
  Plan first = planner.plan(lone, 0), second = planner.plan(lone, 0), third = planner.plan(lone, 0);
  CHECK(first.called.size() == 1 && first.reserved.size() == 1);
  CHECK(first.called[0] != second.called[0] && first.called[0] == third.called[0]);
  CHECK(first.reserved[0] == second.called[0]);  // the copy waits on the other data worker
  for (const Plan& plan : {first, second})
    for (int w : plan.called) CHECK(w != 2);  // the parity worker is not called
}

TEST(lone_query_goes_to_the_worker_with_fewest_calls_in_flight) {
  MemberHealth health(3, 3, 1.0);
  Planner planner(kParm, &health);
  planner.sent(0);
  Layout lone = Layout::for_queries(1, 2);
  CHECK(planner.plan(lone, 0).called[0] == 1 && planner.plan(lone, 0).called[0] == 1);
  planner.returned(0);
  planner.sent(1);
  CHECK(planner.plan(lone, 0).called[0] == 0);
}

TEST(lone_queries_at_k4_each_go_to_one_holder) {
  MemberHealth health(5, 3, 1.0);
  Planner planner(CodeShape{4, 5, true, 4, false}, &health);
  Plan plan = planner.plan(Layout::for_queries(2, 4), 0);  // slots 0 1 0 1
  CHECK(plan.called.size() == 2 && plan.reserved.size() == 2);
  CHECK(plan.called[0] % 2 == 0 && plan.called[1] % 2 == 1);
}

TEST(originals_answer_at_once) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 0.01, 1.0, 0);
  Actions first = race.poll(0);
  CHECK((first.call == std::vector<int>{0, 1, 2}));
  CHECK((queries_of(race.on_answer(0, kUsable)) == std::vector<int>{0}));
  CHECK(!race.poll(0.001).finished);
  CHECK((queries_of(race.on_answer(1, kUsable)) == std::vector<int>{1}));
  Actions done = race.poll(0.002);
  CHECK(done.finished && done.decode.empty() && done.errors.empty());
  CHECK((done.cancel == std::vector<int>{2}));  // the parity straggler is cancelled
  CHECK(!race.reconstructed(0) && !race.reconstructed(1));
}

TEST(missing_worker_is_decoded_after_the_deadline) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 0.01, 1.0, 0);
  race.poll(0);
  race.on_answer(1, kUsable);
  race.on_answer(2, kUsable);
  Actions early = race.poll(0.005);
  CHECK(early.decode.empty() && early.wakeup == 0.01);
  Actions late = race.poll(0.01);
  CHECK((late.decode == std::vector<int>{0}));
  CHECK((race.decode_mask(0) == std::vector<bool>{false, true, true}));
  std::vector<Fill> fills = race.on_decoded({0});
  CHECK(fills.size() == 1 && fills[0].query == 0 && fills[0].slot == 0 && fills[0].reconstructed);
  Actions done = race.poll(0.011);
  CHECK(done.finished && (race.late_workers(0.011) == std::vector<int>{0}));
}

TEST(pure_race_decodes_as_soon_as_enough_are_in) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 0.0, 1.0, 0);
  race.poll(0);
  race.on_answer(1, kUsable);
  CHECK(race.poll(0).decode.empty());  // one of three: nothing to decode yet
  race.on_answer(2, kUsable);
  CHECK((race.poll(0).decode == std::vector<int>{0}));
}

TEST(failed_member_is_missing_at_once) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 10.0, 20.0, 0);
  race.poll(0);
  race.on_answer(1, kUsable);
  race.on_answer(2, kUsable);
  race.on_failure(0, "member_0: unloaded");
  CHECK((race.poll(0.001).decode == std::vector<int>{0}));
}

TEST(non_systematic_code_always_decodes) {
  Race race(kBerrut, Layout::for_queries(2, 2), everyone(3), 0.01, 1.0, 0);
  race.poll(0);
  CHECK(race.on_answer(0, kUsable).empty());  // no originals in a non-systematic code
  CHECK(race.poll(0.001).decode.empty());     // the others are pending and in time
  race.on_answer(1, kUsable);
  race.on_answer(2, kUsable);
  CHECK((race.poll(0.002).decode == std::vector<int>{0}));
  std::vector<Fill> fills = race.on_decoded({0});
  CHECK(fills.size() == 2 && fills[0].reconstructed && fills[1].reconstructed);
}

TEST(non_finite_row_makes_only_its_group_missing) {
  Race race(kParm, Layout::for_queries(4, 2), everyone(3), 0.01, 1.0, 0);
  race.poll(0);
  CHECK((queries_of(race.on_answer(0, {false, true})) == std::vector<int>{2}));
  CHECK((queries_of(race.on_answer(1, kUsable)) == std::vector<int>{1, 3}));
  race.on_answer(2, kUsable);
  Actions actions = race.poll(0.001);
  CHECK((actions.decode == std::vector<int>{0}));
  CHECK((race.on_decoded({0})[0].query == 0));
  CHECK(race.poll(0.002).finished);
}

TEST(postprocess_decodes_originals_too) {
  CodeShape invnet{2, 3, true, 2, true};
  Race race(invnet, Layout::for_queries(2, 2), everyone(3), 0.01, 1.0, 0);
  race.poll(0);
  CHECK(race.on_answer(0, kUsable).empty() && race.on_answer(1, kUsable).empty());
  CHECK((race.poll(0.001).decode == std::vector<int>{0}));
  std::vector<Fill> fills = race.on_decoded({0});
  CHECK(fills.size() == 2 && !fills[0].reconstructed && !fills[1].reconstructed);
}

TEST(reserve_is_called_when_the_lone_member_errors) {
  MemberHealth health(3, 3, 1.0);
  Planner planner(kParm, &health);
  Layout lone = Layout::for_queries(1, 2);
  Plan plan = planner.plan(lone, 0);
  Race race(kParm, lone, plan, 0.01, 1.0, 0);
  CHECK(race.poll(0).call == plan.called);
  race.on_failure(plan.called[0], "boom");
  CHECK(race.poll(0.001).call == plan.reserved);
  CHECK((queries_of(race.on_answer(plan.reserved[0], kUsable)) == std::vector<int>{0}));
  CHECK(race.poll(0.002).finished);
}

TEST(reserve_is_called_after_the_deadline_and_lateness_counts) {
  MemberHealth health(3, 3, 1.0);
  Planner planner(kParm, &health);
  Layout lone = Layout::for_queries(1, 2);
  Plan plan = planner.plan(lone, 0);
  Race race(kParm, lone, plan, 0.01, 1.0, 0);
  race.poll(0);
  CHECK(race.poll(0.005).call.empty());
  CHECK(race.poll(0.01).call == plan.reserved);
  race.on_answer(plan.reserved[0], kUsable);
  CHECK(race.poll(0.012).finished);
  // late against its own deadline, although the reserve's fresh one has not passed
  CHECK(race.late_workers(0.012) == plan.called);
}

TEST(suspended_member_is_replaced_by_a_copy) {
  MemberHealth health(3, 1, 1.0);
  Planner planner(kParm, &health);
  Layout lone = Layout::for_queries(1, 2);
  health.missed(0, 0);
  health.missed(1, 0);
  health.answered(1);
  for (int i = 0; i < 2; ++i) {  // whichever turn, the suspended member 0 is not called
    Plan plan = planner.plan(lone, 0.1);
    CHECK((plan.called == std::vector<int>{1}) && (plan.reserved == std::vector<int>{0}));
  }
  Plan full = planner.plan(Layout::for_queries(2, 2), 0.2);
  CHECK((full.called == std::vector<int>{1, 2}) && (full.reserved == std::vector<int>{0}));
  CHECK(full.reasons.at(0).find("suspended") != std::string::npos);
  Race race(kParm, Layout::for_queries(2, 2), full, 0.01, 1.0, 0.2);
  race.poll(0.2);
  race.on_answer(1, kUsable);
  race.on_answer(2, kUsable);
  CHECK((race.poll(0.201).decode == std::vector<int>{0}));  // decoded at once, no deadline wait
}

TEST(suspended_member_is_called_when_the_others_cannot_decode) {
  MemberHealth health(3, 1, 1.0);
  health.missed(2, 0);
  Planner planner(kParm, &health);
  Plan plan = planner.plan(Layout::for_queries(2, 2), 0.1);
  Race race(kParm, Layout::for_queries(2, 2), plan, 0.01, 1.0, 0.1);
  race.poll(0.1);
  race.on_answer(1, kUsable);
  race.on_failure(0, "boom");
  CHECK((race.poll(0.101).call == std::vector<int>{2}));
}

TEST(unanswerable_queries_get_an_error_at_the_timeout) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 0.01, 1.0, 0);
  race.poll(0);
  race.on_answer(1, kUsable);
  Actions waiting = race.poll(0.5);
  CHECK(waiting.errors.empty() && waiting.wakeup == 1.0);
  Actions timeout = race.poll(1.0);
  CHECK(timeout.errors.size() == 1 && timeout.errors[0].first == 0 && timeout.finished);
  CHECK(timeout.errors[0].second ==
        "no answer and no reconstruction possible (worker 0: no answer in time; worker 2: no answer in time)");
}

TEST(unanswerable_queries_fail_at_once_when_nothing_is_pending) {
  Race race(kParm, Layout::for_queries(2, 2), everyone(3), 10.0, 20.0, 0);
  race.poll(0);
  race.on_answer(1, kUsable);
  race.on_failure(0, "member_0: unloaded");
  race.on_failure(2, "parity: error");
  Actions actions = race.poll(0.001);
  CHECK(actions.errors.size() == 1 && actions.finished);
  CHECK(actions.errors[0].second.find("worker 0: member_0: unloaded; worker 2: parity: error") != std::string::npos);
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
