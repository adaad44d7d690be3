#include "agent/src/telemetry/event_reader.hpp"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

namespace kmesh::telemetry {

namespace {

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

IpAddr addr_of(const __u8 raw[16]) {
    IpAddr a;
    std::memcpy(a.bytes.data(), raw, 16);
    return a;
}

// libbpf's ring buffer on km_conn_events, the iterator link and the two arrays.
class KernelTelemetry : public TelemetryKernel {
  public:
    KernelTelemetry(int config_fd, int stats_fd, int iter_link_fd)
        : config_fd_(config_fd), stats_fd_(stats_fd), iter_link_fd_(iter_link_fd) {}
    ~KernelTelemetry() override { ring_buffer__free(rb_); }

    Status open(int events_fd) {
        rb_ = ring_buffer__new(events_fd, &KernelTelemetry::on_record, this, nullptr);
        if (!rb_)
            return {Errc::kIo, fmt::format("opening the km_conn_events ring buffer: {}", errno_text(errno))};
        return {};
    }

    bool wait(std::chrono::milliseconds timeout) override {
        epoll_event ev{};
        int n = epoll_wait(ring_buffer__epoll_fd(rb_), &ev, 1, static_cast<int>(timeout.count()));
        return n > 0;
    }

    Result<int> consume(const RecordFn& fn) override {
        fn_ = &fn;
        int n = ring_buffer__consume(rb_);
        fn_ = nullptr;
        if (n < 0) return Status(Errc::kIo, fmt::format("reading km_conn_events: {}", errno_text(n)));
        return n;
    }

    Status run_iterator() override {
        if (iter_link_fd_ < 0)
            return {Errc::kUnavailable, "no km_conn iterator on this kernel: bytes are reported at close"};
        int fd = bpf_iter_create(iter_link_fd_);
        if (fd < 0)
            return {Errc::kIo, fmt::format("bpf_iter_create(iter_conn_report): {}", errno_text(errno))};
        // The program writes its events to the ring buffer, nothing to the seq file: reading to EOF
        // is what walks km_conn.
        char buf[256];
        Status st;
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n == 0) break;
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                st = Status(Errc::kIo, fmt::format("running iter_conn_report: {}", errno_text(errno)));
                break;
            }
        }
        close(fd);
        return st;
    }

    Status write_config(const kmesh_tel_config& config) override {
        uint32_t zero = 0;
        if (bpf_map_update_elem(config_fd_, &zero, &config, BPF_ANY) != 0)
            return {Errc::kIo, fmt::format("writing km_tel_config: {}", errno_text(errno))};
        return {};
    }

    Result<KernelTelStats> read_stats() override {
        KernelTelStats out{};
        int ncpu = libbpf_num_possible_cpus();
        if (ncpu <= 0) return Status(Errc::kIo, fmt::format("counting CPUs: {}", errno_text(ncpu)));
        std::vector<uint64_t> per_cpu(static_cast<size_t>(ncpu));
        for (uint32_t slot = 0; slot < KMESH_TEL_STAT_MAX; slot++) {
            if (bpf_map_lookup_elem(stats_fd_, &slot, per_cpu.data()) != 0)
                return Status(Errc::kIo, fmt::format("reading km_tel_stats: {}", errno_text(errno)));
            for (uint64_t v : per_cpu) out[slot] += v;
        }
        return out;
    }

  private:
    static int on_record(void* ctx, void* data, size_t size) {
        auto* self = static_cast<KernelTelemetry*>(ctx);
        if (self->fn_) (*self->fn_)(data, size);
        return 0;
    }

    ring_buffer* rb_ = nullptr;
    const RecordFn* fn_ = nullptr;
    int config_fd_, stats_fd_, iter_link_fd_;
};

}  // namespace

Result<ConnEvent> decode_conn_event(const void* data, size_t size) {
    if (size != sizeof(kmesh_conn_event))
        return Status(Errc::kDataLoss, fmt::format("connection event of {} bytes, expected {}", size,
                                                   sizeof(kmesh_conn_event)));
    kmesh_conn_event raw;
    std::memcpy(&raw, data, sizeof raw);  // the ring buffer gives 8-byte alignment; copy regardless
    if (raw.type < KMESH_CONN_EV_OPEN || raw.type > KMESH_CONN_EV_DENIED)
        return Status(Errc::kDataLoss, fmt::format("connection event of unknown type {}", raw.type));
    if (raw.role != KMESH_CONN_ROLE_SOURCE && raw.role != KMESH_CONN_ROLE_DESTINATION)
        return Status(Errc::kDataLoss, fmt::format("connection event of unknown role {}", raw.role));
    ConnEvent ev;
    ev.type = static_cast<ConnEventType>(raw.type);
    ev.role = static_cast<ConnRole>(raw.role);
    ev.cookie = raw.cookie;
    ev.ts_ns = raw.ts_ns;
    ev.duration_ns = raw.duration_ns;
    ev.sent_bytes = raw.sent_bytes;
    ev.recv_bytes = raw.recv_bytes;
    ev.local = addr_of(raw.local_addr);
    ev.local_port = raw.local_port;
    ev.remote = addr_of(raw.remote_addr);
    ev.remote_port = raw.remote_port;
    ev.translated = (raw.flags & KMESH_CONN_F_TRANSLATED) != 0;
    if (ev.translated) {
        ev.orig = addr_of(raw.orig_addr);
        ev.orig_port = raw.orig_port;
    }
    ev.waypoint = (raw.flags & KMESH_CONN_F_WAYPOINT) != 0;
    ev.accelerated = (raw.flags & KMESH_CONN_F_ACCEL) != 0;
    ev.reason = raw.reason;
    return ev;
}

Result<std::unique_ptr<TelemetryKernel>> make_kernel_telemetry(int events_fd, int config_fd, int stats_fd,
                                                               int iter_link_fd) {
    auto k = std::make_unique<KernelTelemetry>(config_fd, stats_fd, iter_link_fd);
    if (Status st = k->open(events_fd); !st) return st;
    return std::unique_ptr<TelemetryKernel>(std::move(k));
}

EventReader::EventReader(std::unique_ptr<TelemetryKernel> kernel, ConnEventSink sink,
                         std::chrono::milliseconds flush_interval)
    : kernel_(std::move(kernel)), sink_(std::move(sink)), flush_interval_(flush_interval) {}

EventReader::~EventReader() { stop(); }

void EventReader::start() {
    if (thread_.joinable()) return;
    {
        std::lock_guard lock(stop_mu_);
        stopping_ = false;
    }
    thread_ = std::thread([this] { run(); });
}

void EventReader::stop() {
    {
        std::lock_guard lock(stop_mu_);
        stopping_ = true;
    }
    stop_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void EventReader::run() {
    using Clock = std::chrono::steady_clock;
    // The wait is bounded so that stop() is seen within this long even with no events.
    constexpr auto kMaxWait = std::chrono::milliseconds(200);
    auto next_flush = Clock::now() + flush_interval_;
    bool warned = false;
    for (;;) {
        {
            std::lock_guard lock(stop_mu_);
            if (stopping_) return;
        }
        auto until_flush = std::chrono::duration_cast<std::chrono::milliseconds>(next_flush - Clock::now());
        auto wait = std::clamp(until_flush, std::chrono::milliseconds(0), kMaxWait);
        if (kernel_->wait(wait)) {
            if (auto n = drain(); !n && !warned) {
                warned = true;  // once: a broken ring buffer would otherwise log every 200 ms
                spdlog::error("telemetry: {}", n.status().to_string());
            }
        }
        if (Clock::now() >= next_flush) {
            if (Status st = flush(); !st && st.code() != Errc::kUnavailable)
                spdlog::warn("telemetry flush: {}", st.to_string());
            next_flush = Clock::now() + flush_interval_;
        }
    }
}

Result<int> EventReader::consume_locked() {
    return kernel_->consume([this](const void* data, size_t size) {
        auto ev = decode_conn_event(data, size);
        if (!ev) {
            if (malformed_++ == 0) spdlog::warn("telemetry: {}", ev.status().to_string());
            return;
        }
        decoded_++;
        if (sink_) sink_(*ev);
    });
}

Result<int> EventReader::drain() {
    std::lock_guard lock(mu_);
    return consume_locked();
}

Status EventReader::flush() {
    std::lock_guard lock(mu_);
    // Events already in the buffer first: the iterator's UPDATEs then find room in a small one.
    auto before = consume_locked();
    Status iter = kernel_->run_iterator();
    if (iter.code() != Errc::kUnavailable) {
        flushes_++;
        if (!iter) flush_errors_++;
    }
    auto after = consume_locked();
    if (!before) return before.status();
    if (!after) return after.status();
    return iter;
}

Status EventReader::set_enabled(bool enabled) {
    kmesh_tel_config c{};
    c.enabled = enabled ? 1 : 0;
    Status st = kernel_->write_config(c);
    if (st) enabled_ = enabled;
    return st;
}

EventReaderStats EventReader::stats() {
    EventReaderStats s;
    s.decoded = decoded_;
    s.malformed = malformed_;
    s.flushes = flushes_;
    s.flush_errors = flush_errors_;
    if (auto k = kernel_->read_stats()) s.kernel = *k;
    return s;
}

const char* event_type_name(ConnEventType t) {
    switch (t) {
        case ConnEventType::kOpen:
            return "open";
        case ConnEventType::kUpdate:
            return "update";
        case ConnEventType::kClose:
            return "close";
        case ConnEventType::kDenied:
            return "denied";
    }
    return "unknown";
}

const char* role_name(ConnRole r) { return r == ConnRole::kSource ? "source" : "destination"; }

void ConnEventLog::record(const ConnEvent& ev) {
    std::lock_guard lock(mu_);
    ring_.emplace_back(++seq_, ev);
    while (ring_.size() > capacity_) ring_.pop_front();
}

std::string ConnEventLog::json() const {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    auto str = [&](const char* k, const std::string& v) {
        w.Key(k);
        w.String(v.c_str(), static_cast<rapidjson::SizeType>(v.size()));
    };
    auto u64 = [&](const char* k, uint64_t v) {
        w.Key(k);
        w.Uint64(v);
    };
    auto flag = [&](const char* k, bool v) {
        w.Key(k);
        w.Bool(v);
    };
    std::lock_guard lock(mu_);
    w.StartObject();
    u64("recorded", seq_);
    u64("capacity", capacity_);
    w.Key("events");
    w.StartArray();
    for (const auto& [seq, e] : ring_) {
        w.StartObject();
        u64("seq", seq);
        str("type", event_type_name(e.type));
        str("role", role_name(e.role));
        u64("cookie", e.cookie);
        u64("ts_ns", e.ts_ns);
        u64("duration_ns", e.duration_ns);
        u64("sent_bytes", e.sent_bytes);
        u64("recv_bytes", e.recv_bytes);
        str("local", e.local.str());
        u64("local_port", e.local_port);
        str("remote", e.remote.str());
        u64("remote_port", e.remote_port);
        flag("v4", e.remote.is_v4());
        flag("translated", e.translated);
        if (e.translated) {
            str("orig", e.orig.str());
            u64("orig_port", e.orig_port);
        }
        flag("waypoint", e.waypoint);
        flag("accelerated", e.accelerated);
        u64("reason", e.reason);
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    return buf.GetString();
}

}  // namespace kmesh::telemetry
