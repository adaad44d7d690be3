// The life of a client's stream to istiod, whichever API it speaks (the Delta workload API of
// ambient mode, or the SotW Envoy API of kernel-native mode): a thread that reconnects forever,
// a stop() that cancels the live call, and the status both clients report. One stream is: the
// channel, the call's metadata, the context registered for cancellation, the protocol served
// until the stream ends (the client's part), then the call's final status recorded.
#pragma once

#include <fmt/format.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "agent/src/sources/xds/channel.hpp"

namespace kmesh::xds {

// How one stream ended, as the client's serve step reports it.
struct StreamEnd {
    bool delivered = false;  // any response arrived
    grpc::Status status;     // the call's, from Finish()
};

// Status: the client's status type; it has at least `connected`, `connects` and `last_error`.
template <class Status>
class StreamRunner {
  public:
    // Opens the call on `channel` with `ctx` (its metadata added, registered for cancellation),
    // serves the protocol until the stream ends, and finishes the call.
    using Serve =
        std::function<StreamEnd(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext& ctx)>;

    // `options` must outlive the runner; `what` names the stream in the logs;
    // `on_connection` is the handler's, called when a stream delivers its first response and
    // when that stream ends, never under the runner's lock (the handler takes its own).
    StreamRunner(const ClientOptions& options, std::string what, Serve serve,
                 std::function<void(bool)> on_connection)
        : options_(options),
          what_(std::move(what)),
          serve_(std::move(serve)),
          on_connection_(std::move(on_connection)) {}
    StreamRunner(const StreamRunner&) = delete;
    StreamRunner& operator=(const StreamRunner&) = delete;
    ~StreamRunner() { stop(); }

    void start() {
        thread_ = std::thread([this] { run(); });
    }

    void stop() {
        {
            std::lock_guard lock(mu_);  // under mu_, so the reconnect wait cannot miss it
            stopping_ = true;
            if (context_) context_->TryCancel();
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    Status status() const {
        std::lock_guard lock(mu_);
        return status_;
    }

    // Runs f(status) under the lock: never around a write or a handler call, so that a stalled
    // istiod or a slow handler cannot block stop() or status().
    template <class F>
    void update(F&& f) {
        std::lock_guard lock(mu_);
        f(status_);
    }

    // The first response of a stream: counted, then the handler told.
    void mark_connected() {
        update([](Status& s) {
            s.connected = true;
            s.connects++;
        });
        on_connection_(true);
    }

  private:
    // One stream, until it breaks; true if it delivered responses and stayed up for a while.
    bool stream_once() {
        std::string error;
        auto ch = make_channel(options_, &error);
        if (!ch) {
            update([&](Status& s) { s.last_error = error; });
            return false;
        }
        auto started = std::chrono::steady_clock::now();
        grpc::ClientContext ctx;
        add_call_metadata(ctx, options_);
        {
            std::lock_guard lock(mu_);
            if (stopping_) return false;
            context_ = &ctx;
        }
        StreamEnd end = serve_(ch, ctx);
        {
            std::lock_guard lock(mu_);
            context_ = nullptr;
            status_.connected = false;
            status_.last_error = end.status.ok()
                                     ? "stream closed by istiod"
                                     : fmt::format("{} (gRPC code {})", end.status.error_message(),
                                                   static_cast<int>(end.status.error_code()));
        }
        if (end.delivered) on_connection_(false);
        // Only a stream that stayed up resets the backoff: an istiod that accepts and drops at
        // once must not be redialled in a tight loop.
        return end.delivered && std::chrono::steady_clock::now() - started > std::chrono::seconds(5);
    }

    // Reconnects forever; the maps keep serving the last state meanwhile.
    void run() {
        reconnect_forever(
            stopping_, mu_, wake_, what_, [this] { return stream_once(); },
            [this] { return status().last_error; });
    }

    const ClientOptions& options_;
    const std::string what_;
    const Serve serve_;
    const std::function<void(bool)> on_connection_;
    std::thread thread_;
    std::atomic<bool> stopping_{false};
    mutable std::mutex mu_;
    std::condition_variable wake_;
    grpc::ClientContext* context_ = nullptr;  // of the live stream, for cancellation
    Status status_;
};

}  // namespace kmesh::xds
