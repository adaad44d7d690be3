// kmesh-cni logic independent of the kernel: the CNI request (environment + stdin config), result and
// error rendering, and the ADD/DEL/CHECK flows over the Kernel interface.
#pragma once

#include <spdlog/logger.h>

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "cni/attach.hpp"
#include "common/pin_layout.hpp"

namespace kmesh::cni {

inline constexpr const char* kCniVersion = "1.0.0";
inline constexpr const char* kDefaultLogFile = "/var/log/kmesh-cni.log";

// CNI spec error codes, then ours (>= 100).
enum ErrorCode : int {
    kErrIncompatibleVersion = 1,
    kErrInvalidEnv = 4,
    kErrIo = 5,
    kErrDecode = 6,
    kErrInvalidConfig = 7,
    kErrTryAgainLater = 11,
    kErrPodCgroupNotFound = 100,
    kErrAttach = 101,
    kErrNotAttached = 102,
    kErrInternal = 103,
};

class CniError : public std::runtime_error {
  public:
    CniError(int code, const std::string& msg, std::string details = "")
        : std::runtime_error(msg), code_(code), details_(std::move(details)) {}
    int code() const { return code_; }
    const std::string& details() const { return details_; }

  private:
    int code_;
    std::string details_;
};

enum class Command { kAdd, kDel, kCheck, kVersion };

// The CNI_* environment variables.
struct Env {
    std::string command;
    std::string container_id;
    std::string netns;
    std::string ifname;
    std::string args;
    std::string path;

    static Env from_process();
};

struct Config {
    std::string cni_version;
    std::string name;
    std::string bpffs_root = kDefaultBpffsRoot;
    std::string cgroup_root;                 // empty: the cgroup v2 mount in /proc/self/mountinfo
    std::string cgroup_path;                 // empty: find the pod cgroup from K8S_POD_UID
    std::string log_file = kDefaultLogFile;  // empty: no log
    std::string kube_config;
    // prevResult re-serialized with cniVersion set to cni_version; nullopt when absent.
    std::optional<std::string> prev_result;
};

struct Request {
    Command command = Command::kVersion;
    std::string container_id;
    std::map<std::string, std::string> args;  // CNI_ARGS
    Config config;                            // not parsed for VERSION
};

// All parse functions throw CniError with the matching CNI code.
Command parse_command(std::string_view command);
std::map<std::string, std::string> parse_cni_args(std::string_view args);
Config parse_config(std::string_view json);
Request parse_request(const Env& env, std::string_view stdin_json);

std::string render_error(const CniError& error, std::string_view cni_version);
std::string render_version();

// Executes the request; returns what goes to stdout (prevResult for ADD, nothing for DEL/CHECK).
// Throws CniError.
std::string run(const Request& request, Kernel& kernel, spdlog::logger& log);

}  // namespace kmesh::cni
