#include "scheduler.h"

#include <algorithm>
#include <cstring>

#include "fastpath.h"
#include "model.h"

namespace coded {
namespace {

std::vector<int64_t> batch_shape(int64_t batch, const std::vector<int64_t>& dims) {
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), dims.begin(), dims.end());
  return shape;
}

// What a callback's userp owns: a share of its call, dropped with the callback's last use.
template <typename T>
using Hold = std::unique_ptr<std::shared_ptr<T>>;

// A response callback's common part: the holder goes with the final flag, and only the call's
// first response (or a final flag without one: the request ended unanswered) is handled.
template <typename Call, typename Handle>
void first_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp, Handle handle) {
  auto* holder = static_cast<std::shared_ptr<Call>*>(userp);
  std::shared_ptr<Call> call = *holder;
  if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) delete holder;
  ResponsePtr owned(response);
  if (call->answered || (!response && !(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL))) return;
  call->answered = true;
  handle(call, std::move(owned));
}

}  // namespace

Scheduler::Scheduler(ModelState& model)
    : model_(model),
      config_(model.config),
      code_(model.code()),
      health_(config_.num_workers(), config_.suspend_after_misses, config_.probe_interval_s),
      placement_{code_, config_.every_worker(), config_.pin_roles},
      dispatcher_(placement_, config_.calls_per_worker, config_.max_batch_size, &health_),
      deadline_(config_.deadline_min_s, config_.deadline_s, config_.deadline_percentile, config_.deadline_margin,
                config_.deadline_window) {}

template <typename Step>
void Scheduler::run(Step step) {
  Outbox out;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    step(out);
    settle(out);
  }
  flush(out);
}

void Scheduler::submit(const std::vector<std::shared_ptr<ClientRequest>>& clients) {
  run([&](Outbox& out) {
    const double now = now_s();
    const uint64_t submit = ++submits_;
    int remaining = 0;
    for (const auto& client : clients) remaining += client->num_queries;
    for (const auto& client : clients) {
      for (int row = 0; row < client->num_queries; ++row, --remaining) {
        std::shared_ptr<Group> group = joinable(submit);
        if (!group) group = open_group(now, remaining >= config_.k ? 0 : lone_turn_++);
        group->submit = submit;
        group->queries.push_back({client, row});
        group->race.add_query(now);
        if (group->race.num_queries() == config_.k) close(group, now);
        drive(group, out);
      }
    }
    // without a bound, groups form within one execute only
    while (config_.group_close_s <= 0 && !open_.empty()) {
      std::shared_ptr<Group> group = open_.front();
      close(group, now);
      drive(group, out);
    }
  });
}

// The oldest open group a query of this submit may join (Race::may_join); rows of one execute fill
// a group together, so a batch forms full groups.
std::shared_ptr<Group> Scheduler::joinable(uint64_t submit) const {
  for (const auto& group : open_)
    if (group->race.may_join(group->submit == submit)) return group;
  return nullptr;
}

std::shared_ptr<Group> Scheduler::open_group(double now, int turn) {
  auto group = std::make_shared<Group>(next_id_++, config_, Race(code_, deadline_.deadline(), config_.timeout_s, now));
  group->turn = turn;
  groups_[group->id] = group;
  open_.push_back(group);
  if (config_.group_close_s > 0) close_when_due(group->id, now + config_.group_close_s);
  return group;
}

// A partial group closes group_close_s after its first original left the queue: the bound is how
// long the parity may lag the work it protects, and time a query waits for a busy worker is not that.
void Scheduler::close_when_due(uint64_t id, double when) {
  model_.timer.at(when, [this, id] {
    run([&](Outbox& out) {
      std::shared_ptr<Group> group = find(id);
      if (!group || !group->race.is_open()) return;
      const double now = now_s(), sent = group->race.first_sent();
      if (sent == std::numeric_limits<double>::infinity() && group->race.original_queued())
        return close_when_due(id, now + config_.group_close_s);
      if (sent != std::numeric_limits<double>::infinity() && now < sent + config_.group_close_s)
        return close_when_due(id, sent + config_.group_close_s);
      close(group, now);
      drive(group, out);
    });
  });
}

void Scheduler::close(const std::shared_ptr<Group>& group, double now) {
  // Immediate redundancy costs nothing while a worker idles; under load the copy waits in
  // reserve, sent only if the original errors or passes its deadline (a hedge).
  const int queries = group->race.num_queries();
  const bool copies_now =
      config_.copy_when_idle && queries < config_.k && dispatcher_.spare_worker_for(group->id, queries, now);
  group->race.close(now, copies_now);
  if (config_.encoder == Encoder::Sum) group->encode_by_sum();
  open_.erase(std::remove(open_.begin(), open_.end(), group), open_.end());
}

void Scheduler::drive(const std::shared_ptr<Group>& group, Outbox& out) {
  Group& g = *group;
  while (!g.finished) {
    const double now = now_s();
    // an open group whose queries are all answered has nothing left to protect
    if (g.race.is_open() && g.race.all_resolved()) close(group, now);
    Actions actions = g.race.poll(now);
    if (g.race.needs_coded(now)) dispatcher_.promote(g.id);
    for (const auto& [query, message] : actions.errors) fail(g, query, message, out);
    bool again = false;
    for (int role : actions.call) {
      const bool hedge = g.race.calls(role) > 1;  // the role's stuck call still runs: this one goes elsewhere
      if (g.worker_of[role] >= 0) {  // a retry: the worker that missed it counts the miss now, finish() sees the retry
        health_.missed(g.worker_of[role], now);
        (hedge ? g.counts.late_workers : g.counts.failed_workers).push_back(g.worker_of[role]);
        g.worker_of[role] = -1;
      }
      if (code_.is_original(role) || config_.encoder != Encoder::Model || g.encoded) {
        const bool copy = code_.is_original(role) && (hedge || g.race.slot_query(role) != role);
        dispatcher_.push({g.id, role, placement_.preferred(g.id, role, g.turn), g.held_back[role], copy});
      } else if (!g.encoder_error.empty()) {
        g.race.on_failure(role, g.encoder_error);
        again = true;
      } else {
        g.awaiting_encoder.push_back(role);  // sent once the encoder answers
        if (!g.encoder_started) out.encodes.push_back(codec_call(group, true, now));
        g.encoder_started = true;
      }
    }
    if (actions.decode && config_.decoder == Decoder::Subtract) {
      int missing = 0;
      std::vector<float> estimate = g.decode_by_subtraction(missing);
      for (const Fill& fill : g.race.on_decoded())
        resolve(g, fill, fill.role == missing ? reinterpret_cast<const char*>(estimate.data()) : g.rows[fill.role], out);
      g.counts.decode_us += (now_s() - now) * 1e6;
      continue;
    }
    if (actions.decode) out.decodes.push_back(codec_call(group, false, now));
    if (actions.finished) return finish(g, actions, now);
    if (!again) return schedule(group, actions.wakeup);
  }
}

void Scheduler::settle(Outbox& out) {
  while (true) {
    std::vector<Task> held_back, unplaceable;
    const double now = now_s();
    for (Assignment& assignment : dispatcher_.next(now, held_back, unplaceable)) {
      auto call = std::make_shared<MemberCall>();
      call->scheduler = this;
      call->worker = assignment.worker;
      call->kind = placement_.model(assignment.tasks[0].role);
      for (const Task& task : assignment.tasks) {
        std::shared_ptr<Group> group = find(task.group);  // queued tasks of ended groups were dropped
        group->worker_of[task.role] = assignment.worker;
        group->call_of[task.role] = call;
        group->race.on_sent(task.role, now);
        call->groups.push_back(group);
      }
      call->tasks = std::move(assignment.tasks);
      call->input = member_input(*call);
      out.calls.push_back(call);
    }
    for (const Task& task : held_back) {
      std::shared_ptr<Group> group = find(task.group);
      group->held_back[task.role] = true;
      group->race.on_held_back(task.role, "every member that may run it is suspended after " +
                                              std::to_string(config_.suspend_after_misses) + " consecutive misses");
      drive(group, out);
    }
    for (const Task& task : unplaceable) {
      std::shared_ptr<Group> group = find(task.group);
      group->race.on_failure(task.role, "every member that may run it failed a task of its group");
      drive(group, out);
    }
    if (held_back.empty() && unplaceable.empty()) return;
  }
}

void Scheduler::finish(Group& group, const Actions& actions, double now) {
  group.finished = true;
  // Stragglers no group needs: a backend that checks for cancellation stops early.
  for (int role : actions.cancel) {
    std::shared_ptr<MemberCall> call = group.call_of[role].lock();
    if (call && ++call->unneeded == call->tasks.size() && call->request)
      TRITONSERVER_ErrorDelete(TRITONSERVER_InferenceRequestCancel(call->request));
  }
  GroupCounts& counts = group.counts;
  for (int role = 0; role < config_.num_workers(); ++role) {
    const int worker = group.worker_of[role];
    if (worker < 0) continue;
    if (group.race.state(role) == Call::Answered) health_.answered(worker);
    if (group.race.state(role) != Call::Failed) continue;
    health_.missed(worker, now);
    counts.failed_workers.push_back(worker);
  }
  for (int role : group.race.late_roles(now)) {
    if (group.worker_of[role] < 0) continue;
    health_.missed(group.worker_of[role], now);
    counts.late_workers.push_back(group.worker_of[role]);
  }
  counts.queries = group.race.num_queries();
  counts.groups = 1;
  counts.padded_slots = group.race.padded_slots();
  model_.metrics.record(counts);
  dispatcher_.forget(group.id);
  groups_.erase(group.id);
}

void Scheduler::resolve(Group& group, const Fill& fill, const char* answer, Outbox& out) {
  Group::Query& query = group.queries[fill.query];
  ClientRequest& client = *query.client;
  const size_t row_bytes = config_.output.row_bytes();
  std::memcpy(client.answers.data() + query.row * row_bytes, answer, row_bytes);
  client.reconstructed[query.row] = fill.reconstructed;
  group.counts.reconstructed += fill.reconstructed;
  if (++client.resolved == client.num_queries) out.responses.push_back(query.client);
}

void Scheduler::fail(Group& group, int query, const std::string& message, Outbox& out) {
  ClientRequest& client = *group.queries[query].client;
  if (client.error.empty()) client.error = message;
  ++group.counts.errors;
  if (++client.resolved == client.num_queries) out.responses.push_back(group.queries[query].client);
}

void Scheduler::schedule(const std::shared_ptr<Group>& group, double when) {
  if (when >= group->wakeup) return;
  group->wakeup = when;
  model_.timer.at(when, [this, id = group->id] {
    run([&](Outbox& out) {
      std::shared_ptr<Group> woken = find(id);
      if (!woken) return;
      woken->wakeup = std::numeric_limits<double>::infinity();
      drive(woken, out);
    });
  });
}

std::shared_ptr<Group> Scheduler::find(uint64_t id) const {
  auto it = groups_.find(id);
  return it == groups_.end() ? nullptr : it->second;
}

void Scheduler::flush(Outbox& out) {
  for (const auto& call : out.calls) {
    std::string error = send_member(call);
    if (error.empty()) continue;
    run([&](Outbox& next) {
      dispatcher_.returned(call->worker);
      for (const Task& task : call->tasks) dispatcher_.failed(task.group, call->worker);
      call->answered = true;
      for (size_t i = 0; i < call->tasks.size(); ++i) {
        call->groups[i]->race.on_failure(call->tasks[i].role, error);
        drive(call->groups[i], next);
      }
    });
  }
  for (const auto& call : out.encodes) {
    std::string error = send_codec(call);
    if (error.empty()) continue;
    run([&](Outbox& next) {
      Group& group = *call->group;
      group.encoder_error = error;
      for (int role : group.awaiting_encoder) group.race.on_failure(role, error);
      group.awaiting_encoder.clear();
      drive(call->group, next);
    });
  }
  for (const auto& call : out.decodes) {
    std::string error = send_codec(call);
    if (error.empty()) continue;
    run([&](Outbox& next) {
      call->group->race.on_decode_failed(error);
      drive(call->group, next);
    });
  }
  for (const auto& client : out.responses) {
    respond(*client, config_.output.name, model_.output_type, config_.output.dims);
    model_.in_flight -= client->num_queries;
  }
}

InputSpec Scheduler::member_input(const MemberCall& call) const {
  const int64_t rows = call.tasks.size();
  const Group& first = *call.groups[0];
  InputSpec input{config_.input.name, model_.input_type, batch_shape(rows, config_.input.dims), {}};
  if (call.kind > 0 && config_.encoder == Encoder::Stack) {
    input.shape = batch_shape(rows, batch_shape(config_.k, config_.input.dims));
  } else if (call.kind > 0 && config_.encoder == Encoder::Model) {
    input.dtype = first.encoded_view.dtype;
    input.shape = batch_shape(rows, {first.encoded_view.shape.begin() + 2, first.encoded_view.shape.end()});
  }
  for (int64_t i = 0; i < rows; ++i) call.groups[i]->append_input(call.tasks[i].role, input);
  return input;
}

std::string Scheduler::send_member(const std::shared_ptr<MemberCall>& call) {
  const std::string& model = config_.model_of(call->worker, call->kind);
  try {
    RequestPtr request = new_request(model_.server, model, {call->input}, config_.member_output.name);
    Hold<MemberCall> release_hold(new std::shared_ptr<MemberCall>(call));
    Hold<MemberCall> response_hold(new std::shared_ptr<MemberCall>(call));
    check(TRITONSERVER_InferenceRequestSetReleaseCallback(request.get(), on_member_release, release_hold.get()));
    check(TRITONSERVER_InferenceRequestSetResponseCallback(request.get(), model_.allocator.get(), nullptr,
                                                           on_member_response, response_hold.get()));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      call->request = request.get();
    }
    call->start = now_s();
    if (TRITONSERVER_Error* e = TRITONSERVER_ServerInferAsync(model_.server, request.get(), nullptr)) {
      ErrorPtr error(e);
      std::lock_guard<std::mutex> lock(mutex_);
      call->request = nullptr;
      return model + ": " + TRITONSERVER_ErrorMessage(e);
    }
    request.release();  // Triton owns it until on_member_release
    release_hold.release();
    response_hold.release();
    return "";
  } catch (const TritonFailure& failure) {
    std::lock_guard<std::mutex> lock(mutex_);
    call->request = nullptr;
    return model + ": " + failure.what();
  }
}

std::shared_ptr<Scheduler::CodecCall> Scheduler::codec_call(const std::shared_ptr<Group>& group, bool encoder,
                                                              double now) {
  auto call = std::make_shared<CodecCall>(CodecCall{this, group, encoder, {}, {}, now});
  std::vector<InputSpec>& inputs = call->inputs;
  if (encoder) {
    inputs.push_back({"queries", model_.input_type, batch_shape(1, batch_shape(config_.k, config_.input.dims)), {}});
    for (int slot = 0; slot < config_.k; ++slot)
      inputs[0].chunks.emplace_back(group->slot_row(slot), config_.input.row_bytes());
  } else {
    call->buffers = group->decoder_buffers();
    const int64_t workers = config_.num_workers();
    inputs.push_back({"results", model_.member_output_type, batch_shape(1, batch_shape(workers, config_.member_output.dims)),
                      {{call->buffers[0].data(), call->buffers[0].size()}}});
    inputs.push_back({"available", TRITONSERVER_TYPE_BOOL, {1, workers}, {{call->buffers[1].data(), call->buffers[1].size()}}});
  }
  return call;
}

std::string Scheduler::send_codec(const std::shared_ptr<CodecCall>& call) {
  const bool encoder = call->encoder;
  const std::string& model = encoder ? config_.encoder_model : config_.decoder_model;
  try {
    RequestPtr request = new_request(model_.server, model, call->inputs, encoder ? "coded_queries" : "estimates");
    Hold<CodecCall> release_hold(new std::shared_ptr<CodecCall>(call));
    Hold<CodecCall> response_hold(new std::shared_ptr<CodecCall>(call));
    check(TRITONSERVER_InferenceRequestSetReleaseCallback(request.get(), on_codec_release, release_hold.get()));
    check(TRITONSERVER_InferenceRequestSetResponseCallback(request.get(), model_.allocator.get(), nullptr,
                                                           on_codec_response, response_hold.get()));
    check(TRITONSERVER_ServerInferAsync(model_.server, request.get(), nullptr));
    request.release();
    release_hold.release();
    response_hold.release();
    return "";
  } catch (const TritonFailure& failure) {
    return model + ": " + failure.what();
  }
}

void Scheduler::on_member_release(TRITONSERVER_InferenceRequest* request, uint32_t, void* userp) {
  Hold<MemberCall> hold(static_cast<std::shared_ptr<MemberCall>*>(userp));
  MemberCall& call = **hold;
  {
    std::lock_guard<std::mutex> lock(call.scheduler->mutex_);
    if (call.request == request) call.request = nullptr;
  }
  RequestPtr owned(request);
}

void Scheduler::on_member_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp) {
  first_response<MemberCall>(response, flags, userp,
                             [](const auto& call, ResponsePtr r) { call->scheduler->member_answered(call, std::move(r)); });
}

void Scheduler::member_answered(const std::shared_ptr<MemberCall>& call, ResponsePtr response) {
  const TensorDesc& expected = config_.member_output;
  const size_t rows = call->tasks.size();
  const double latency = now_s() - call->start;
  std::vector<bool> usable(rows);
  TensorView view{};
  std::string error;
  try {
    if (!response) throw TritonFailure("no response");
    view = output_of(response.get(), expected.name);
    std::vector<int64_t> shape = batch_shape(rows, expected.dims);
    if (view.dtype != model_.member_output_type || view.shape != shape)
      throw TritonFailure(std::string("returned ") + TRITONSERVER_DataTypeString(view.dtype) + " " +
                          shape_text(view.shape) + ", expected " + expected.dtype + " " + shape_text(shape));
    for (size_t i = 0; i < rows; ++i)
      usable[i] = row_finite(view.base + i * expected.row_bytes(), expected.elements(), expected.dtype);
  } catch (const TritonFailure& failure) {
    error = config_.model_of(call->worker, call->kind) + ": " + failure.what();
  }
  if (error.empty()) model_.metrics.answered_rows(static_cast<int>(rows));
  SharedResponse shared = share(std::move(response));
  run([&](Outbox& out) {
    dispatcher_.returned(call->worker);
    for (const Task& task : call->tasks)
      error.empty() ? dispatcher_.answered(task.group, call->worker) : dispatcher_.failed(task.group, call->worker);
    if (error.empty()) deadline_.record(latency);
    for (size_t i = 0; i < rows; ++i) {
      const std::shared_ptr<Group>& group = call->groups[i];
      const int role = call->tasks[i].role;
      if (group->finished) continue;
      if (!error.empty()) {
        group->race.on_failure(role, error);
      } else {
        const char* row = view.base + i * expected.row_bytes();
        std::vector<Fill> fills = group->race.on_answer(role, usable[i]);
        if (group->race.state(role) == Call::Answered && !group->results[role]) {
          group->results[role] = shared;
          group->rows[role] = row;
        }
        for (const Fill& fill : fills) resolve(*group, fill, row, out);
      }
      drive(group, out);
    }
  });
}

void Scheduler::on_codec_release(TRITONSERVER_InferenceRequest* request, uint32_t, void* userp) {
  Hold<CodecCall> hold(static_cast<std::shared_ptr<CodecCall>*>(userp));
  RequestPtr owned(request);
}

void Scheduler::on_codec_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp) {
  first_response<CodecCall>(response, flags, userp,
                            [](const auto& call, ResponsePtr r) { call->scheduler->codec_answered(call, std::move(r)); });
}

void Scheduler::codec_answered(const std::shared_ptr<CodecCall>& call, ResponsePtr response) {
  const bool encoder = call->encoder;
  const std::string& model = encoder ? config_.encoder_model : config_.decoder_model;
  std::string error;
  TensorView view{};
  try {
    if (!response) throw TritonFailure("no response");
    view = output_of(response.get(), encoder ? "coded_queries" : "estimates");
    if (encoder && (view.shape.size() < 2 || view.shape[0] != 1 || view.shape[1] != config_.num_coded()))
      throw TritonFailure("returned coded_queries " + shape_text(view.shape) + ", expected [1, " +
                          std::to_string(config_.num_coded()) + ", ...]");
    std::vector<int64_t> shape = batch_shape(1, batch_shape(config_.k, config_.output.dims));
    if (!encoder && (view.dtype != model_.output_type || view.shape != shape))
      throw TritonFailure(std::string("returned estimates ") + TRITONSERVER_DataTypeString(view.dtype) + " " +
                          shape_text(view.shape) + ", expected " + config_.output.dtype + " " + shape_text(shape));
  } catch (const TritonFailure& failure) {
    error = model + ": " + failure.what();
  }
  run([&](Outbox& out) {
    Group& group = *call->group;
    if (group.finished) return;
    if (encoder && error.empty()) {
      group.encoded = share(std::move(response));
      group.encoded_view = view;
      for (int role : group.awaiting_encoder)
        dispatcher_.push({group.id, role, placement_.preferred(group.id, role, group.turn), group.held_back[role]});
    } else if (encoder) {
      group.encoder_error = error;
      for (int role : group.awaiting_encoder) group.race.on_failure(role, error);
    } else if (error.empty()) {
      for (const Fill& fill : group.race.on_decoded())
        resolve(group, fill, view.base + fill.role * config_.output.row_bytes(), out);
      group.counts.decode_us += (now_s() - call->start) * 1e6;
    } else {
      group.race.on_decode_failed(error);
    }
    if (encoder) group.awaiting_encoder.clear();
    drive(call->group, out);
  });
}

}  // namespace coded
