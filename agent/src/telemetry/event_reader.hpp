// The kernel side of telemetry in the agent (docs/telemetry.md "Kernel events"): reads the
// connection events the BPF programs write to the km_conn_events ring buffer, decodes them into
// ConnEvent and hands them to a sink (the agent, which feeds telemetry::Telemetry). Also runs the
// km_conn iterator that makes open connections report their bytes, and switches tracking on/off.
//
// Flow: kernel (sockops, sk_lookup, iter_conn_report) -> ring buffer -> EventReader -> sink.
// The reader never looks at the model: names are the metrics side's business.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "agent/src/telemetry/conn_event.hpp"
#include "common/abi.hpp"
#include "common/status.hpp"

namespace kmesh::telemetry {

// One ring buffer record (struct kmesh_conn_event) decoded: addresses as the 16-byte form the ABI
// uses (IPv4-mapped), ports already in host order in the record. kDataLoss for a record of another
// size or an unknown type / role (a kernel of another layout writing into our buffer).
Result<ConnEvent> decode_conn_event(const void* data, size_t size);

using KernelTelStats = std::array<uint64_t, KMESH_TEL_STAT_MAX>;  // by enum kmesh_tel_stat

// The kernel calls the reader makes, behind an interface (as Katran does) so that the decoding
// and the flush logic can be tested with hand-built records.
class TelemetryKernel {
  public:
    using RecordFn = std::function<void(const void* data, size_t size)>;
    virtual ~TelemetryKernel() = default;
    // Waits up to timeout for records in the ring buffer; false when none came (or on EINTR).
    virtual bool wait(std::chrono::milliseconds timeout) = 0;
    // Hands every record now in the ring buffer to fn, in order, without blocking. Returns how many.
    virtual Result<int> consume(const RecordFn& fn) = 0;
    // Runs iter_conn_report once (its UPDATE events land in the ring buffer). kUnavailable when this
    // kernel has no such iterator.
    virtual Status run_iterator() = 0;
    virtual Status write_config(const kmesh_tel_config& config) = 0;
    virtual Result<KernelTelStats> read_stats() = 0;  // summed over CPUs
};

// The real one, on the data plane's fds (which must outlive it). iter_link_fd -1: no iterator.
Result<std::unique_ptr<TelemetryKernel>> make_kernel_telemetry(int events_fd, int config_fd, int stats_fd,
                                                               int iter_link_fd);

struct EventReaderStats {
    uint64_t decoded = 0;       // events handed to the sink
    uint64_t malformed = 0;     // records refused by decode_conn_event
    uint64_t flushes = 0;       // iterator runs
    uint64_t flush_errors = 0;  // iterator runs that failed
    KernelTelStats kernel{};    // the kernel's counters (events written, dropped, untracked, tracked)
};

class EventReader {
  public:
    // flush_interval: how often the poll thread runs flush() on its own (--metrics-flush-interval).
    EventReader(std::unique_ptr<TelemetryKernel> kernel, ConnEventSink sink,
                std::chrono::milliseconds flush_interval);
    ~EventReader();  // stops the thread
    EventReader(const EventReader&) = delete;
    EventReader& operator=(const EventReader&) = delete;

    void start();  // the poll thread: events as they come, a flush every flush_interval
    void stop();

    // Runs the iterator (open connections report their bytes), then hands every event in the ring
    // buffer to the sink before returning. Called before a scrape is served; any thread.
    Status flush();
    // Consumes what is in the ring buffer now (no iterator run). Returns the number of records.
    Result<int> drain();

    // km_tel_config.enabled: whether the kernel tracks new connections (tracked ones still report
    // until they close).
    Status set_enabled(bool enabled);
    bool enabled() const { return enabled_; }

    EventReaderStats stats();

  private:
    Result<int> consume_locked();  // mu_ held
    void run();

    std::unique_ptr<TelemetryKernel> kernel_;
    ConnEventSink sink_;
    std::chrono::milliseconds flush_interval_;
    std::mutex mu_;  // one consumer of the ring buffer at a time; the sink is called under it
    std::atomic<bool> enabled_{false};
    std::atomic<uint64_t> decoded_{0}, malformed_{0}, flushes_{0}, flush_errors_{0};
    std::mutex stop_mu_;
    std::condition_variable stop_cv_;
    bool stopping_ = false;  // stop_mu_
    std::thread thread_;
};

// The last events decoded (bounded), for operators and tests: admin GET /debug/conn_events.
class ConnEventLog {
  public:
    explicit ConnEventLog(size_t capacity = 256) : capacity_(capacity) {}
    void record(const ConnEvent& ev);
    // {"recorded": N, "capacity": C, "events": [{"seq": ..., "type": "open", ...}, ...]}, oldest first.
    std::string json() const;

  private:
    size_t capacity_;
    mutable std::mutex mu_;
    uint64_t seq_ = 0;                                 // mu_
    std::deque<std::pair<uint64_t, ConnEvent>> ring_;  // mu_
};

const char* event_type_name(ConnEventType t);
const char* role_name(ConnRole r);

}  // namespace kmesh::telemetry
