// kmesh-cni asks the node's agent whether a pod is in the mesh (issue 12: a fast ADD).
//
// An ADD with a kubeConfig used to GET the pod (and its namespace) from the API server: dlopen of
// libcurl and a TLS handshake, ~20 ms of every such ADD. The agent already watches this node's pods
// and all namespaces (its enrolment reconciler), so it can answer from its informer caches with the
// same rule (decide_enrolment). The plugin asks over a unix socket (the agent's `--cni-socket`, the
// plugin's `agentSocket`) and falls back to the API server whenever the agent cannot answer: not
// running, not synced, the pod not (yet) in its cache or cached under another uid, the namespace
// unknown. So the agent is an accelerator, never a new way for an ADD to fail.
//
// Wire format: one SOCK_SEQPACKET message each way, JSON objects:
//   query  {"namespace": ..., "name": ..., "uid": ... (may be ""), "kmeshNamespace": ...}
//   answer {"known": true, "enrolled": bool, "reason": ...} or {"known": false, "reason": ...}
// Both ends check the peer's credentials (SO_PEERCRED): only root talks to root, so another local
// user can neither ask nor, by binding the path first, answer "not in the mesh" for a pod.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/status.hpp"

namespace kmesh {

struct PodQuery {
    std::string ns;
    std::string name;
    std::string uid;  // K8S_POD_UID; empty: not checked
    std::string kmesh_namespace = "kmesh-system";
};

struct PodAnswer {
    bool known = false;     // false: the agent cannot tell; ask the API server
    bool enrolled = false;  // meaningful only when known
    std::string reason;
};

// Largest message either side accepts (names are at most 253 bytes; reasons are short).
inline constexpr std::size_t kAgentQueryMaxBytes = 4096;

std::string encode_query(const PodQuery& q);
Result<PodQuery> decode_query(std::string_view text);
std::string encode_answer(const PodAnswer& a);
Result<PodAnswer> decode_answer(std::string_view text);

// The plugin's side: connects to `socket_path`, sends `q`, waits at most `timeout` in all.
// kUnavailable when nobody listens, kTimeout, kPermissionDenied when the listener is not root (or
// this process's own uid), kDataLoss for a malformed answer.
Result<PodAnswer> ask_agent(const std::string& socket_path, const PodQuery& q,
                            std::chrono::milliseconds timeout);

}  // namespace kmesh
