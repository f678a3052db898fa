// The ensemble's scheduler on the server, one per model: coding groups formed as queries
// stream in across executes (ParM's frontend), a queue of member tasks handed to workers as
// they free up (late binding), and each group's race. One lock guards it all; calls into
// Triton that may block or call back are made outside it.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "group.h"

namespace coded {

struct ModelState;
class Scheduler;

// One member call: a row per task, each of a different group.
struct MemberCall {
  Scheduler* scheduler;
  int worker;
  int kind;  // Placement::model of its roles
  std::vector<Task> tasks;
  std::vector<std::shared_ptr<Group>> groups;  // keep their query rows alive until Triton releases the call
  InputSpec input;  // built under the lock: a group's queries and slots change while it is open
  double start = 0;
  TRITONSERVER_InferenceRequest* request = nullptr;  // while Triton holds it
  size_t unneeded = 0;  // tasks whose group ended: all of them, and the call is cancelled
  bool answered = false;
};

class Scheduler {
 public:
  explicit Scheduler(ModelState& model);
  // Each query joins the oldest open group it may (Race::may_join), or opens one; its original goes
  // out at once. A group closes on its k-th query, when all its queries are answered, or
  // group_close_s after its first original left the queue.
  void submit(const std::vector<std::shared_ptr<ClientRequest>>& clients);

 private:
  struct CodecCall {  // an encoder or decoder call for one group
    Scheduler* scheduler;
    std::shared_ptr<Group> group;
    bool encoder;  // else the decoder
    std::vector<std::vector<char>> buffers;
    std::vector<InputSpec> inputs;  // built under the lock, pointing into the group's rows or buffers
    double start;
    bool answered = false;
  };
  struct Outbox {  // what a locked step leaves to do outside the lock
    std::vector<std::shared_ptr<MemberCall>> calls;
    std::vector<std::shared_ptr<CodecCall>> encodes, decodes;
    std::vector<std::shared_ptr<ClientRequest>> responses;
  };
  template <typename Step>
  void run(Step step);
  void flush(Outbox& out);

  std::shared_ptr<Group> joinable(uint64_t submit) const;
  std::shared_ptr<Group> open_group(double now, int turn);
  void close_when_due(uint64_t group, double when);
  void close(const std::shared_ptr<Group>& group, double now);
  void drive(const std::shared_ptr<Group>& group, Outbox& out);
  void settle(Outbox& out);
  void finish(Group& group, const Actions& actions, double now);
  void resolve(Group& group, const Fill& fill, const char* answer, Outbox& out);
  void fail(Group& group, int query, const std::string& message, Outbox& out);
  void schedule(const std::shared_ptr<Group>& group, double when);
  std::shared_ptr<Group> find(uint64_t id) const;

  InputSpec member_input(const MemberCall& call) const;
  std::shared_ptr<CodecCall> codec_call(const std::shared_ptr<Group>& group, bool encoder, double now);
  std::string send_member(const std::shared_ptr<MemberCall>& call);
  std::string send_codec(const std::shared_ptr<CodecCall>& call);
  void member_answered(const std::shared_ptr<MemberCall>& call, ResponsePtr response);
  void codec_answered(const std::shared_ptr<CodecCall>& call, ResponsePtr response);

  static void on_member_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp);
  static void on_member_release(TRITONSERVER_InferenceRequest* request, uint32_t flags, void* userp);
  static void on_codec_response(TRITONSERVER_InferenceResponse* response, uint32_t flags, void* userp);
  static void on_codec_release(TRITONSERVER_InferenceRequest* request, uint32_t flags, void* userp);

  ModelState& model_;
  const EnsembleConfig& config_;
  const CodeShape code_;
  std::mutex mutex_;  // guards everything below and every group
  MemberHealth health_;
  const Placement placement_;
  Dispatcher dispatcher_;
  AdaptiveDeadline deadline_;
  std::map<uint64_t, std::shared_ptr<Group>> groups_;  // open or racing
  std::deque<std::shared_ptr<Group>> open_;  // groups new queries may join, oldest first
  uint64_t next_id_ = 0;
  uint64_t submits_ = 0;
  int lone_turn_ = 0;  // turns of the groups that may stay partial
};

}  // namespace coded
