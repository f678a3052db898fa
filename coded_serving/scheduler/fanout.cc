#include "fanout.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "fastpath.h"

namespace coded {
namespace {

// What a request sent to another model keeps alive until Triton releases it.
struct Hold {
  std::shared_ptr<Fanout> fanout;
  int worker;  // -1: the encoder or the decoder
  std::vector<std::vector<char>> buffers;
};

// Where its response goes.
struct Reply {
  std::shared_ptr<Fanout> fanout;
  int worker;
  std::vector<int> groups;
  double start;
  bool answered = false;
};

std::vector<int64_t> batch_shape(int64_t batch, const std::vector<int64_t>& dims) {
  std::vector<int64_t> shape{batch};
  shape.insert(shape.end(), dims.begin(), dims.end());
  return shape;
}

void write_output(TRITONBACKEND_Response* response, const std::string& name, TRITONSERVER_DataType dtype,
                  const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  TRITONBACKEND_Output* output = nullptr;
  check(TRITONBACKEND_ResponseOutput(response, &output, name.c_str(), dtype, shape.data(), shape.size()));
  void* buffer = nullptr;
  TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
  int64_t memory_id = 0;
  check(TRITONBACKEND_OutputBuffer(output, &buffer, bytes, &memory, &memory_id));
  if (memory == TRITONSERVER_MEMORY_GPU) throw TritonFailure("output '" + name + "' was given GPU memory");
  std::memcpy(buffer, data, bytes);
}

}  // namespace

void reject(TRITONBACKEND_ModelInstance* instance, TRITONBACKEND_Request* request, TRITONSERVER_Error_Code code,
            const std::string& message, uint64_t exec_start_ns) {
  TRITONBACKEND_Response* response = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&response, request)) {
    log(TRITONSERVER_LOG_ERROR, std::string("cannot answer a request: ") + TRITONSERVER_ErrorMessage(e));
    TRITONSERVER_ErrorDelete(e);
  } else {
    ErrorPtr error(TRITONSERVER_ErrorNew(code, message.c_str()));
    TRITONSERVER_ErrorDelete(TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error.get()));
  }
  uint64_t end = now_ns();
  TRITONSERVER_ErrorDelete(
      TRITONBACKEND_ModelInstanceReportStatistics(instance, request, false, exec_start_ns, exec_start_ns, end, end));
  TRITONSERVER_ErrorDelete(TRITONBACKEND_RequestRelease(request, TRITONSERVER_REQUEST_RELEASE_ALL));
}

void Fanout::start(ModelState& model, TRITONBACKEND_ModelInstance* instance,
                   std::vector<std::shared_ptr<ClientRequest>> clients, uint64_t exec_start_ns) {
  int queries = 0;
  for (const auto& client : clients) queries += client->num_queries;
  Layout layout = Layout::for_queries(queries, model.config.k);
  Plan plan;
  {
    std::lock_guard<std::mutex> lock(model.scheduling);
    plan = model.planner.plan(layout, now_s());
  }
  std::shared_ptr<Fanout> fanout(
      new Fanout(model, instance, exec_start_ns, std::move(layout), std::move(plan), std::move(clients)));
  fanout->drive();
}

Fanout::Fanout(ModelState& model, TRITONBACKEND_ModelInstance* instance, uint64_t exec_start_ns, Layout layout,
               Plan plan, std::vector<std::shared_ptr<ClientRequest>> clients)
    : model_(model),
      config_(model.config),
      instance_(instance),
      exec_start_ns_(exec_start_ns),
      clients_(std::move(clients)),
      race_(model.code(), layout, plan, model.config.deadline_s, model.config.timeout_s, now_s()),
      results_(model.config.num_workers()),
      result_base_(model.config.num_workers(), nullptr),
      in_flight_(model.config.num_workers(), nullptr),
      scheduled_wakeup_(std::numeric_limits<double>::infinity()) {
  for (const auto& client : clients_)
    for (int row = 0; row < client->num_queries; ++row) queries_.push_back({client.get(), row});
  counts_.queries = layout.num_queries;
  counts_.groups = layout.groups();
  counts_.padded_slots = layout.padded_slots();
}

const char* Fanout::query_row(int query) const {
  return queries_[query].owner->input.data() + queries_[query].row * config_.input.row_bytes();
}

void Fanout::drive() {
  std::vector<int> calls, decodes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    drive_locked(calls, decodes);
  }
  dispatch(calls, decodes);
}

void Fanout::drive_locked(std::vector<int>& calls, std::vector<int>& decodes) {
  while (true) {
    Actions actions = race_.poll(now_s());
    for (const auto& [query, message] : actions.errors) fail(query, message);
    calls.insert(calls.end(), actions.call.begin(), actions.call.end());
    bool decoded_here = false;
    for (int group : actions.decode) {
      if (config_.decoder == Decoder::Subtract) {
        decode_by_subtraction(group);
        decoded_here = true;
      } else {
        decodes.push_back(group);
      }
    }
    if (actions.finished) return finish(actions);
    if (!decoded_here) return schedule(actions.wakeup);
  }
}

void Fanout::dispatch(const std::vector<int>& calls, const std::vector<int>& decodes) {
  bool failed = false;
  for (int worker : calls) {
    std::string error = send_member(worker);
    if (error.empty()) continue;
    std::lock_guard<std::mutex> lock(mutex_);
    race_.on_failure(worker, error);
    failed = true;
  }
  if (!decodes.empty()) {
    std::string error = send_decoder(decodes);
    if (!error.empty()) {
      std::lock_guard<std::mutex> lock(mutex_);
      race_.on_decode_failed(decodes, error);
      failed = true;
    }
  }
  if (failed) drive();
}

void Fanout::schedule(double when) {
  if (when >= scheduled_wakeup_ || when == std::numeric_limits<double>::infinity()) return;
  scheduled_wakeup_ = when;
  model_.timer.at(when, [weak = weak_from_this()] {
    std::shared_ptr<Fanout> fanout = weak.lock();
    if (!fanout) return;
    {
      std::lock_guard<std::mutex> lock(fanout->mutex_);
      fanout->scheduled_wakeup_ = std::numeric_limits<double>::infinity();
    }
    fanout->drive();
  });
}

void Fanout::apply(const std::vector<Fill>& fills, const std::vector<const char*>& sources) {
  for (size_t i = 0; i < fills.size(); ++i) resolve(fills[i].query, sources[i], fills[i].reconstructed);
}

void Fanout::resolve(int query, const char* answer, bool reconstructed) {
  ClientRequest& owner = *queries_[query].owner;
  size_t row_bytes = config_.output.row_bytes();
  std::memcpy(owner.answers.data() + queries_[query].row * row_bytes, answer, row_bytes);
  owner.reconstructed[queries_[query].row] = reconstructed;
  counts_.reconstructed += reconstructed;
  if (++owner.resolved == owner.num_queries) respond(owner);
}

void Fanout::fail(int query, const std::string& message) {
  ClientRequest& owner = *queries_[query].owner;
  if (owner.error.empty()) owner.error = message;
  ++counts_.errors;
  if (++owner.resolved == owner.num_queries) respond(owner);
}

void Fanout::respond(ClientRequest& client) {
  ErrorPtr error;
  TRITONBACKEND_Response* raw = nullptr;
  if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&raw, client.request)) {
    error.reset(e);
    log(TRITONSERVER_LOG_ERROR, std::string("cannot answer a request: ") + TRITONSERVER_ErrorMessage(e));
  } else {
    if (!client.error.empty()) {
      error.reset(TRITONSERVER_ErrorNew(client.error_code, client.error.c_str()));
    } else {
      try {
        write_output(raw, config_.output.name, model_.output_type, batch_shape(client.num_queries, config_.output.dims),
                     client.answers.data(), client.answers.size());
        std::vector<char> flags(client.reconstructed.begin(), client.reconstructed.end());
        write_output(raw, RECONSTRUCTED, TRITONSERVER_TYPE_BOOL, {client.num_queries, 1}, flags.data(), flags.size());
      } catch (const TritonFailure& failure) {
        error.reset(TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, failure.what()));
      }
    }
    TRITONSERVER_ErrorDelete(TRITONBACKEND_ResponseSend(raw, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error.get()));
  }
  model_.in_flight -= client.num_queries;
  uint64_t end = now_ns();
  TRITONSERVER_ErrorDelete(TRITONBACKEND_ModelInstanceReportStatistics(instance_, client.request, !error,
                                                                        exec_start_ns_, exec_start_ns_, end, end));
}

void Fanout::finish(const Actions& actions) {
  // Stragglers no group needs: members have a dynamic batcher, so Triton drops them if queued.
  for (int worker : actions.cancel)
    if (in_flight_[worker]) TRITONSERVER_ErrorDelete(TRITONSERVER_InferenceRequestCancel(in_flight_[worker]));
  double now = now_s();
  counts_.late_workers = race_.late_workers(now);
  {
    std::lock_guard<std::mutex> lock(model_.scheduling);
    for (int w = 0; w < config_.num_workers(); ++w) {
      if (race_.state(w) == Call::Answered) model_.health.answered(w);
      if (race_.state(w) != Call::Failed) continue;
      model_.health.missed(w, now);
      counts_.failed_workers.push_back(w);
    }
    for (int w : counts_.late_workers) model_.health.missed(w, now);
  }
  model_.metrics.record(counts_);
}

void Fanout::decode_by_subtraction(int group) {
  double start = now_s();
  const std::vector<bool>& mask = race_.decode_mask(group);
  const size_t elements = config_.member_output.elements();
  const size_t row_bytes = config_.member_output.row_bytes();
  auto row = [&](int worker) { return result_base_[worker] + group * row_bytes; };
  int missing = 0;
  while (mask[missing]) ++missing;
  std::vector<const float*> others;
  for (int i = 0; i < config_.k; ++i)
    if (i != missing) others.push_back(reinterpret_cast<const float*>(row(i)));
  std::vector<float> estimate(elements);
  subtract_missing(others, reinterpret_cast<const float*>(row(config_.k)), config_.parity_weight, elements,
                   estimate.data());
  std::vector<Fill> fills = race_.on_decoded({group});
  std::vector<const char*> sources;
  for (const Fill& fill : fills)
    sources.push_back(fill.slot == missing ? reinterpret_cast<const char*>(estimate.data()) : row(fill.slot));
  apply(fills, sources);
  counts_.decode_us += (now_s() - start) * 1e6;
}

std::string Fanout::send_member(int worker) {
  const std::string& member = config_.members[worker];
  const Layout& layout = race_.layout();
  const int64_t groups = layout.groups();
  const size_t row_bytes = config_.input.row_bytes();
  try {
    InputSpec input{config_.input.name, model_.input_type, batch_shape(groups, config_.input.dims), {}};
    if (config_.systematic && worker < config_.k) {
      for (int g = 0; g < groups; ++g) input.chunks.emplace_back(query_row(layout.at(g, worker)), row_bytes);
    } else if (config_.encoder == Encoder::Sum) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (summed_.empty()) {
        summed_.resize(groups * config_.input.elements());
        for (int g = 0; g < groups; ++g) {
          std::vector<const float*> rows;
          for (int i = 0; i < config_.k; ++i) rows.push_back(reinterpret_cast<const float*>(query_row(layout.at(g, i))));
          sum_rows(rows, config_.input.elements(), summed_.data() + g * config_.input.elements());
        }
      }
      input.chunks.emplace_back(summed_.data(), summed_.size() * sizeof(float));
    } else if (config_.encoder == Encoder::Stack) {
      input.shape = batch_shape(groups, batch_shape(config_.k, config_.input.dims));  // [G, k, *in]
      for (int g = 0; g < groups; ++g)
        for (int i = 0; i < config_.k; ++i) input.chunks.emplace_back(query_row(layout.at(g, i)), row_bytes);
    } else {
      bool waiting = false, start_encoder = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!encoder_error_.empty()) return encoder_error_;
        waiting = !encoded_;
        if (waiting) {
          awaiting_encoder_.push_back(worker);
          start_encoder = !encoder_started_;
          encoder_started_ = true;
        }
      }
      if (start_encoder) return send_encoder();
      if (waiting) return "";  // sent from the encoder's response
      const int coded = worker - (config_.systematic ? config_.k : 0);
      std::vector<int64_t> coded_dims(encoded_view_.shape.begin() + 2, encoded_view_.shape.end());
      size_t coded_bytes = encoded_view_.bytes / (groups * config_.num_coded());
      input.dtype = encoded_view_.dtype;
      input.shape = batch_shape(groups, coded_dims);
      for (int g = 0; g < groups; ++g)
        input.chunks.emplace_back(encoded_view_.base + (g * config_.num_coded() + coded) * coded_bytes, coded_bytes);
    }
    return send(new_request(model_.server, member, {input}, config_.member_output.name), worker, on_member_response,
                {}, {});
  } catch (const TritonFailure& failure) {
    return member + ": " + failure.what();
  }
}

std::string Fanout::send_encoder() {
  const Layout& layout = race_.layout();
  InputSpec queries{"queries", model_.input_type, batch_shape(layout.groups(), batch_shape(config_.k, config_.input.dims)),
                    {}};
  for (int g = 0; g < layout.groups(); ++g)
    for (int i = 0; i < config_.k; ++i) queries.chunks.emplace_back(query_row(layout.at(g, i)), config_.input.row_bytes());
  std::string error;
  try {
    error = send(new_request(model_.server, config_.encoder_model, {queries}, "coded_queries"), -1, on_encoder_response,
                 {}, {});
  } catch (const TritonFailure& failure) {
    error = config_.encoder_model + ": " + failure.what();
  }
  if (!error.empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    encoder_error_ = error;
    for (int worker : awaiting_encoder_) race_.on_failure(worker, error);
    awaiting_encoder_.clear();
  }
  return "";  // the waiting coded workers carry the failure
}

std::string Fanout::send_decoder(const std::vector<int>& groups) {
  const int workers = config_.num_workers();
  const size_t row_bytes = config_.member_output.row_bytes();
  std::vector<char> results(groups.size() * workers * row_bytes, 0), available(groups.size() * workers, 0);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < groups.size(); ++i) {
      const std::vector<bool>& mask = race_.decode_mask(groups[i]);
      for (int w = 0; w < workers; ++w) {
        if (!mask[w]) continue;
        available[i * workers + w] = 1;
        std::memcpy(results.data() + (i * workers + w) * row_bytes, result_base_[w] + groups[i] * row_bytes, row_bytes);
      }
    }
  }
  const int64_t count = groups.size();
  std::vector<int64_t> results_shape = batch_shape(count, batch_shape(workers, config_.member_output.dims));
  InputSpec results_input{"results", model_.member_output_type, results_shape, {{results.data(), results.size()}}};
  InputSpec available_input{"available", TRITONSERVER_TYPE_BOOL, {count, workers}, {{available.data(), available.size()}}};
  try {
    std::vector<std::vector<char>> buffers;
    buffers.push_back(std::move(results));
    buffers.push_back(std::move(available));
    return send(new_request(model_.server, config_.decoder_model, {results_input, available_input}, "estimates"), -1,
                on_decoder_response, std::move(buffers), groups);
  } catch (const TritonFailure& failure) {
    return config_.decoder_model + ": " + failure.what();
  }
}

std::string Fanout::send(RequestPtr request, int worker, TRITONSERVER_InferenceResponseCompleteFn_t on_response,
                         std::vector<std::vector<char>> buffers, std::vector<int> groups) {
  auto hold = std::make_unique<Hold>(Hold{shared_from_this(), worker, std::move(buffers)});
  auto reply = std::make_unique<Reply>(Reply{shared_from_this(), worker, std::move(groups), now_s()});
  check(TRITONSERVER_InferenceRequestSetReleaseCallback(request.get(), on_release, hold.get()));
  check(TRITONSERVER_InferenceRequestSetResponseCallback(request.get(), model_.allocator.get(), nullptr, on_response,
                                                         reply.get()));
  if (worker >= 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_flight_[worker] = request.get();
  }
  if (worker >= 0) {
    std::lock_guard<std::mutex> lock(model_.scheduling);
    model_.planner.sent(worker);
  }
  if (TRITONSERVER_Error* e = TRITONSERVER_ServerInferAsync(model_.server, request.get(), nullptr)) {
    ErrorPtr error(e);
    if (worker >= 0) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        in_flight_[worker] = nullptr;
      }
      std::lock_guard<std::mutex> lock(model_.scheduling);
      model_.planner.returned(worker);
    }
    std::string name = worker >= 0 ? config_.members[worker] : "";
    return (name.empty() ? "" : name + ": ") + TRITONSERVER_ErrorMessage(e);
  }
  request.release();  // Triton owns it until on_release
  hold.release();
  reply.release();
  return "";
}

void Fanout::on_release(TRITONSERVER_InferenceRequest* request, uint32_t, void* userp) {
  std::unique_ptr<Hold> hold(static_cast<Hold*>(userp));
  if (hold->worker >= 0) {
    std::lock_guard<std::mutex> lock(hold->fanout->mutex_);
    if (hold->fanout->in_flight_[hold->worker] == request) hold->fanout->in_flight_[hold->worker] = nullptr;
  }
  RequestPtr owned(request);
}

void Fanout::on_member_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp) {
  Reply* reply = static_cast<Reply*>(userp);
  Fanout& fanout = *reply->fanout;
  if (response || ((flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) && !reply->answered)) {
    {
      std::lock_guard<std::mutex> lock(fanout.model_.scheduling);
      fanout.model_.planner.returned(reply->worker);
    }
    if (response)
      fanout.member_answered(reply->worker, ResponsePtr(response));
    else
      fanout.member_failed(reply->worker, fanout.config_.members[reply->worker] + ": no response");
    reply->answered = true;
  }
  if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) delete reply;
}

void Fanout::member_answered(int worker, ResponsePtr response) {
  const TensorDesc& expected = config_.member_output;
  const int groups = race_.layout().groups();
  std::vector<bool> usable(groups);
  TensorView view{};
  try {
    view = output_of(response.get(), expected.name);
    std::vector<int64_t> shape = batch_shape(groups, expected.dims);
    if (view.dtype != model_.member_output_type || view.shape != shape)
      throw TritonFailure(std::string("returned ") + TRITONSERVER_DataTypeString(view.dtype) + " " +
                          shape_text(view.shape) + ", expected " + expected.dtype + " " + shape_text(shape));
    for (int g = 0; g < groups; ++g)
      usable[g] = row_finite(view.base + g * expected.row_bytes(), expected.elements(), expected.dtype);
  } catch (const TritonFailure& failure) {
    return member_failed(worker, config_.members[worker] + ": " + failure.what());
  }
  std::vector<int> calls, decodes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<Fill> fills = race_.on_answer(worker, usable);
    if (race_.state(worker) == Call::Answered && !results_[worker]) {
      results_[worker] = std::move(response);
      result_base_[worker] = view.base;
    }
    std::vector<const char*> sources;
    for (const Fill& fill : fills) sources.push_back(view.base + fill.group * expected.row_bytes());
    apply(fills, sources);
    drive_locked(calls, decodes);
  }
  dispatch(calls, decodes);
}

void Fanout::member_failed(int worker, const std::string& reason) {
  std::vector<int> calls, decodes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    race_.on_failure(worker, reason);
    drive_locked(calls, decodes);
  }
  dispatch(calls, decodes);
}

void Fanout::on_encoder_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp) {
  Reply* reply = static_cast<Reply*>(userp);
  if (response) {
    reply->answered = true;
    reply->fanout->encoder_answered(ResponsePtr(response));
  } else if ((flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) && !reply->answered) {
    reply->answered = true;
    reply->fanout->encoder_answered(nullptr);
  }
  if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) delete reply;
}

void Fanout::encoder_answered(ResponsePtr response) {
  const int64_t groups = race_.layout().groups();
  std::string error;
  TensorView view{};
  try {
    if (!response) throw TritonFailure("no response");
    view = output_of(response.get(), "coded_queries");
    if (view.shape.size() < 2 || view.shape[0] != groups || view.shape[1] != config_.num_coded())
      throw TritonFailure("returned coded_queries " + shape_text(view.shape) + ", expected [" + std::to_string(groups) +
                          ", " + std::to_string(config_.num_coded()) + ", ...]");
  } catch (const TritonFailure& failure) {
    error = config_.encoder_model + ": " + failure.what();
  }
  std::vector<int> waiting;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    waiting.swap(awaiting_encoder_);
    if (error.empty()) {
      encoded_ = std::move(response);
      encoded_view_ = view;
    } else {
      encoder_error_ = error;
      for (int worker : waiting) race_.on_failure(worker, error);
      waiting.clear();
    }
  }
  dispatch(waiting, {});
  drive();
}

void Fanout::on_decoder_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp) {
  Reply* reply = static_cast<Reply*>(userp);
  if (response || ((flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) && !reply->answered)) {
    reply->answered = true;
    reply->fanout->decoder_answered(ResponsePtr(response), reply->groups, reply->start);
  }
  if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) delete reply;
}

void Fanout::decoder_answered(ResponsePtr response, const std::vector<int>& groups, double start) {
  std::string error;
  TensorView view{};
  const size_t row_bytes = config_.output.row_bytes();
  try {
    if (!response) throw TritonFailure("no response");
    view = output_of(response.get(), "estimates");
    std::vector<int64_t> shape = batch_shape(groups.size(), batch_shape(config_.k, config_.output.dims));
    if (view.dtype != model_.output_type || view.shape != shape)
      throw TritonFailure(std::string("returned estimates ") + TRITONSERVER_DataTypeString(view.dtype) + " " +
                          shape_text(view.shape) + ", expected " + config_.output.dtype + " " + shape_text(shape));
  } catch (const TritonFailure& failure) {
    error = config_.decoder_model + ": " + failure.what();
  }
  std::vector<int> calls, decodes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error.empty()) {
      std::vector<Fill> fills = race_.on_decoded(groups);
      std::vector<const char*> sources;
      for (const Fill& fill : fills) {
        size_t index = std::find(groups.begin(), groups.end(), fill.group) - groups.begin();
        sources.push_back(view.base + (index * config_.k + fill.slot) * row_bytes);
      }
      apply(fills, sources);
      counts_.decode_us += (now_s() - start) * 1e6;
    } else {
      race_.on_decode_failed(groups, error);
    }
    drive_locked(calls, decodes);
  }
  dispatch(calls, decodes);
}

}  // namespace coded
