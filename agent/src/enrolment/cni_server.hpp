// The agent's answer to kmesh-cni's "is this pod in the mesh?" (common/agent_query.hpp): a unix
// SOCK_SEQPACKET socket served by one thread, one query and one answer per connection. The answer
// comes from a callback (the reconciler's informer caches); the server only does the socket work:
// the path's directory (0700) and the socket (0600), peer credentials, bounded reads, and a stop
// that never waits on a client.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "agent/src/admin/metrics.hpp"
#include "common/agent_query.hpp"
#include "common/status.hpp"

namespace kmesh::enrolment {

class CniServer {
  public:
    using AnswerFn = std::function<PodAnswer(const PodQuery&)>;

    // `metrics`: every query is counted by its answer (kmesh_cni_queries_total).
    CniServer(std::string path, AnswerFn answer, Metrics& metrics);
    ~CniServer();  // stops; removes the socket file it created
    CniServer(const CniServer&) = delete;
    CniServer& operator=(const CniServer&) = delete;

    // Binds (replacing a stale socket file, never any other kind of file) and starts the thread.
    Status start();
    void stop();

  private:
    void loop();
    void serve(int conn);

    std::string path_;
    AnswerFn answer_;
    int listen_fd_ = -1;
    int stop_fd_ = -1;
    bool bound_ = false;
    std::thread thread_;
    Metrics& metrics_;
};

}  // namespace kmesh::enrolment
