#include "agent/src/telemetry/metrics_server.hpp"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace kmesh::telemetry {

struct MetricsServer::Impl {
    httplib::Server server;
    std::thread thread;
    std::mutex mu;
    std::condition_variable cv;
    bool stopping = false;  // mu
    std::atomic<bool> done{false};
    std::atomic<bool> listening{false};
};

MetricsServer::MetricsServer(std::string address, int port, Render render,
                             std::atomic<uint64_t>& bind_failures)
    : impl_(std::make_unique<Impl>()) {
    auto& srv = impl_->server;
    // Bounded like the admin server: slow or idle scrapers cannot hold every worker.
    srv.set_read_timeout(1, 0);
    srv.set_write_timeout(5, 0);
    srv.set_keep_alive_timeout(5);
    srv.set_keep_alive_max_count(100);
    srv.set_payload_max_length(4 << 10);
    srv.new_task_queue = [] { return new httplib::ThreadPool(2); };
    srv.Get(kPath, [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
        res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    srv.set_error_handler([](const httplib::Request&, httplib::Response& res) {
        if (res.status == 404)
            res.set_content("404 not found: only GET /stats/prometheus is served here\n", "text/plain");
    });
    Impl* impl = impl_.get();
    impl->thread = std::thread([impl, address, port, &bind_failures] {
        auto wait = std::chrono::seconds(1);
        for (;;) {
            if (impl->server.bind_to_port(address.c_str(), port)) break;
            uint64_t failures = ++bind_failures;
            if (failures == 1 || failures % 10 == 0)
                spdlog::error(
                    "metrics: cannot listen on {}:{} ({} attempts; is another process on that port?); "
                    "retrying "
                    "up to every 30 s",
                    address, port, failures);
            std::unique_lock lock(impl->mu);
            if (impl->cv.wait_for(lock, wait, [impl] { return impl->stopping; })) {
                impl->done = true;
                return;
            }
            wait = std::min(wait * 2, std::chrono::seconds(30));
        }
        impl->listening = true;
        spdlog::info("metrics on http://{}:{}{}", address, port, kPath);
        impl->server.listen_after_bind();
        impl->done = true;
    });
}

MetricsServer::~MetricsServer() {
    {
        std::lock_guard lock(impl_->mu);
        impl_->stopping = true;
    }
    impl_->cv.notify_all();
    // httplib's stop() does nothing until listen has begun: repeat it until the thread ends.
    while (impl_->thread.joinable() && !impl_->done) {
        impl_->server.stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (impl_->thread.joinable()) impl_->thread.join();
}

bool MetricsServer::listening() const { return impl_->listening; }

}  // namespace kmesh::telemetry
