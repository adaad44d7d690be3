// kmesh-cni logic independent of the kernel: the CNI request (environment + stdin config), result and
// error rendering, and the ADD/DEL/CHECK flows over the Kernel interface.
#pragma once

#include <spdlog/logger.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cni/attach.hpp"
#include "common/kube/api.hpp"
#include "common/pin_layout.hpp"
#include "common/status.hpp"

namespace kmesh::cni {

// The version VERSION answers in (the newest supported).
inline constexpr const char* kCniVersion = "1.1.0";
inline constexpr const char* kDefaultLogFile = "/var/log/kmesh-cni.log";
// The log file is moved to <logFile>.1 once it reaches this size (one old file kept).
inline constexpr std::size_t kLogRotateBytes = 1 << 20;
// Deepest JSON nesting accepted on stdin (real configs nest < 10 levels).
inline constexpr int kMaxJsonDepth = 64;

// The error codes and the error type are shared with the attach code (common/pod_links.hpp).
using ErrorCode = kmesh::CniErrorCode;
using enum kmesh::CniErrorCode;
using CniError = kmesh::PodLinkError;

enum class Command { kAdd, kDel, kCheck, kVersion, kStatus, kGc };

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

// One entry of GC's cni.dev/valid-attachments.
struct Attachment {
    std::string container_id;
    std::string ifname;
};

struct Config {
    std::string cni_version;
    std::string name;
    std::string type;
    std::string bpffs_root = kDefaultBpffsRoot;
    std::string cgroup_root;                 // empty: the cgroup v2 mount in /proc/self/mountinfo
    std::string cgroup_path;                 // empty: find the pod cgroup from K8S_POD_UID
    std::string log_file = kDefaultLogFile;  // empty: no log
    // Enrolment by labels (issue 8): with a kubeconfig, ADD asks the API server whether the pod is
    // in the mesh; without one every pod of the chain is enrolled (standalone setups).
    std::string kube_config;
    std::vector<std::string> exclude_namespaces = {"kube-system"};  // never asked about, never blocked
    std::string kmesh_namespace = "kmesh-system";                   // the agent's own pods: never enrolled
    // The agent's --cni-socket: asked first, from its informer caches (common/agent_query.hpp); the
    // API server only when the agent cannot answer. Empty: the API server only.
    std::string agent_socket;
    // prevResult re-serialized with cniVersion set to cni_version; nullopt when absent.
    std::optional<std::string> prev_result;
    // GC only: cni.dev/valid-attachments (nullopt when the key is absent).
    std::optional<std::vector<Attachment>> valid_attachments;
};

struct Request {
    Command command = Command::kVersion;
    std::string container_id;
    std::map<std::string, std::string> args;  // CNI_ARGS
    std::string netns;                        // CNI_NETNS (ADD/CHECK: required; DEL: may be empty)
    Config config;                            // not parsed for VERSION
    // DEL only: why the config cannot be used. A DEL with a config that ADD would have refused has
    // nothing to undo, so it succeeds (with a logged warning) instead of stranding the sandbox.
    std::string unusable_config;
};

// All parse functions throw CniError with the matching CNI code.
Command parse_command(std::string_view command);
std::map<std::string, std::string> parse_cni_args(std::string_view args);
// `lenient`: accept any cniVersion string and skip the name/type checks (DEL).
Config parse_config(std::string_view json, bool lenient = false);
Request parse_request(const Env& env, std::string_view stdin_json);

std::string render_error(const CniError& error, std::string_view cni_version);
std::string render_version();

// Executes the request; returns what goes to stdout (prevResult for ADD, nothing for the others).
// Throws CniError.
// Makes the API client from the config's kubeConfig path: the seam unit tests fake (main.cpp
// passes load_kubeconfig + make_client). Without one, a config with kubeConfig fails ADD (code 11).
using ApiFactory = std::function<Result<std::unique_ptr<kube::Api>>(const std::string& kubeconfig)>;

std::string run(const Request& request, Kernel& kernel, spdlog::logger& log, const ApiFactory& api = {});

// The parse + validate path of one invocation, without the kernel: what the plugin would print
// when the input is refused (a CNI error object), or "" when it is accepted. For the fuzzer.
std::string check_input(const Env& env, std::string_view stdin_json);

// `s` with bytes that are not valid UTF-8 replaced by U+FFFD (JSON output must be UTF-8).
std::string to_valid_utf8(std::string_view s);
// `s` for a log line: control characters, backslash and invalid UTF-8 as \xNN, so input can never
// start a forged line.
std::string escape_for_log(std::string_view s);

// The whole plugin process minus the real kernel and the standard streams: logs to the config's
// logFile (or `default_log` when the config cannot be read), writes the CNI output to `out`,
// returns the exit code.
int plugin_main(const Env& env, std::string_view stdin_json, Kernel& kernel, std::string& out,
                const std::string& default_log = kDefaultLogFile, const ApiFactory& api = {});
// A logger writing to `path` (rotated at kLogRotateBytes, lines escaped), or dropping everything
// when `path` is empty or cannot be opened.
std::shared_ptr<spdlog::logger> open_log(const std::string& path);

}  // namespace kmesh::cni
