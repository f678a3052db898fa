// One thread that runs callbacks at given instants: it drives deadlines and timeouts.
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <queue>
#include <thread>
#include <utility>
#include <vector>

namespace coded {

double now_s();  // steady clock, seconds

class Timer {
 public:
  Timer();
  ~Timer();  // runs nothing that is still waiting
  void at(double when, std::function<void()> callback);

 private:
  using Entry = std::pair<double, std::function<void()>>;
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const { return a.first > b.first; }
  };
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::priority_queue<Entry, std::vector<Entry>, Later> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace coded
