// The standard process_* series (what Prometheus client libraries export), from /proc/self.
#pragma once

#include <string>

namespace kmesh::telemetry {

// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds; a value that cannot be read is
// left out (never a made-up 0).
void append_process_metrics(std::string& out);

}  // namespace kmesh::telemetry
