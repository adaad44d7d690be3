#include "agent/src/telemetry/process_metrics.hpp"

#include <dirent.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <vector>

#include "agent/src/telemetry/prom_text.hpp"

namespace kmesh::telemetry {

namespace {

// /proc/self/stat fields after the command (which may hold spaces and parentheses): field 3 on.
std::vector<std::string> stat_fields() {
    std::ifstream in("/proc/self/stat");
    std::string line;
    if (!std::getline(in, line)) return {};
    auto close = line.rfind(')');
    if (close == std::string::npos) return {};
    std::istringstream rest(line.substr(close + 1));
    std::vector<std::string> f;
    for (std::string x; rest >> x;) f.push_back(x);
    return f;
}

long long boot_time() {
    std::ifstream in("/proc/stat");
    for (std::string key; in >> key;) {
        if (key == "btime") {
            long long v = 0;
            in >> v;
            return v;
        }
        in.ignore(1 << 20, '\n');
    }
    return -1;
}

int open_fds() {
    DIR* d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (dirent* e = readdir(d))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;  // the directory's own fd
}

void gauge(std::string& out, const char* name, const char* help, const char* type, double v) {
    append_header(out, name, help, type);
    fmt::format_to(std::back_inserter(out), "{} {}\n", name, v);
}

}  // namespace

void append_process_metrics(std::string& out) {
    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    auto f = stat_fields();
    // Numbered as in proc(5): utime 14, stime 15, starttime 22, vsize 23, rss 24; f[0] is field 3.
    auto field = [&](size_t n) { return std::stod(f.at(n - 3)); };
    if (f.size() >= 22 && ticks > 0) {
        gauge(out, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter",
              (field(14) + field(15)) / ticks);
        if (long long bt = boot_time(); bt >= 0)
            gauge(out, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                  "gauge", static_cast<double>(bt) + field(22) / ticks);
        gauge(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge", field(23));
        gauge(out, "process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
              field(24) * page);
    }
    if (int n = open_fds(); n >= 0)
        gauge(out, "process_open_fds", "Number of open file descriptors.", "gauge", n);
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        gauge(out, "process_max_fds", "Maximum number of open file descriptors.", "gauge",
              static_cast<double>(rl.rlim_cur));
}

}  // namespace kmesh::telemetry
