#include "agent/src/telemetry/access_log.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

namespace kmesh::telemetry {

namespace {

const std::string& or_dash(const std::string& v) {
    static const std::string dash = "-";
    return v.empty() ? dash : v;
}

}  // namespace

std::string endpoint_str(const IpAddr& a, uint16_t port) {
    return a.is_v4() ? fmt::format("{}:{}", a.str(), port) : fmt::format("[{}]:{}", a.str(), port);
}

std::string format_access_line(const AccessRecord& r) {
    auto since_epoch = r.time.time_since_epoch();
    auto secs = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    auto micros = std::chrono::duration_cast<std::chrono::microseconds>(since_epoch - secs).count();
    std::time_t t = static_cast<std::time_t>(secs.count());
    std::tm tm{};
    gmtime_r(&t, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    // Kmesh's duration is milliseconds as a decimal ("2.236ms").
    return fmt::format(
        "{}.{:06d}Z src.addr={}, src.workload={}, src.namespace={}, dst.addr={}, dst.service={}, "
        "dst.workload={}, dst.namespace={}, direction={}, sent_bytes={}, received_bytes={}, duration={}ms, "
        "result={}",
        stamp, micros, endpoint_str(r.src_addr, r.src_port), or_dash(r.src_workload),
        or_dash(r.src_namespace), endpoint_str(r.dst_addr, r.dst_port), or_dash(r.dst_service),
        or_dash(r.dst_workload), or_dash(r.dst_namespace), r.inbound ? "INBOUND" : "OUTBOUND", r.sent_bytes,
        r.received_bytes, static_cast<double>(r.duration_ns) / 1e6, r.denied ? "denied" : "closed");
}

void TokenBucket::set_rate(uint32_t per_second, Clock::time_point now) {
    rate_ = per_second;
    tokens_ = per_second;  // a full burst at start and after a change
    last_ = now;
}

bool TokenBucket::take(Clock::time_point now) {
    if (rate_ == 0) return true;
    if (now > last_) {
        double elapsed = std::chrono::duration<double>(now - last_).count();
        tokens_ = std::min<double>(rate_, tokens_ + elapsed * rate_);
        last_ = now;
    }
    if (tokens_ < 1) return false;
    tokens_ -= 1;
    return true;
}

}  // namespace kmesh::telemetry
