#include "timer.h"

#include <chrono>

namespace coded {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Timer::Timer() : thread_([this] { run(); }) {}

Timer::~Timer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void Timer::at(double when, std::function<void()> callback) {
  bool earliest = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    earliest = queue_.empty() || when < queue_.top().first;
    queue_.emplace(when, std::move(callback));
  }
  // the thread already wakes for an earlier entry; waking it costs a context switch per call
  if (earliest) wake_.notify_one();
}

void Timer::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    if (queue_.empty()) {
      wake_.wait(lock);
      continue;
    }
    double wait = queue_.top().first - now_s();
    if (wait > 0) {
      wake_.wait_for(lock, std::chrono::duration<double>(wait));
      continue;
    }
    std::function<void()> callback = queue_.top().second;
    queue_.pop();
    lock.unlock();  // a callback may schedule again
    callback();
    lock.lock();
  }
}

}  // namespace coded
