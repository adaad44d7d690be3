// The standalone config source: a YAML file shaped like the Istio workload API.
//
//   services:
//   - name: echo
//     namespace: default
//     hostname: echo.default.svc.cluster.local
//     addresses: ["10.96.0.10", "fd00:10:96::10"]    # or {network: "", address: ...}
//     ports: [{service_port: 80, target_port: 8080}]   # target_port omitted: the service port;
//                                                     # 0: a named port, each workload maps it
//     load_balancing: {routing_preference: [REGION, ZONE], mode: FAILOVER}   # or PASSTHROUGH, ...
//   workloads:
//   - uid: Kubernetes//Pod/default/echo-1
//     name: echo-1
//     namespace: default
//     addresses: ["10.244.0.11"]
//     services: {"default/echo.default.svc.cluster.local": {ports: [{service_port: 80, target_port: 8080}]}}
//     status: HEALTHY                                 # or UNHEALTHY
//     service_account: echo                           # with trust_domain (default cluster.local)
//     authorization_policies: [default/p]             # WORKLOAD_SELECTOR policies selecting it
//     waypoint: {address: "10.244.0.5", hbone_mtls_port: 15019}   # or {hostname: {namespace, hostname}}
//     workload_name: echo                             # telemetry labels (docs/telemetry.md): the
//     canonical_name: echo                            # Deployment, the canonical service and
//     canonical_revision: v1                          # revision, the cluster (default: --cluster-id)
//     cluster_id: Kubernetes
//   policies:                                         # istio.security.Authorization (README: config)
//   - name: p
//     namespace: default
//     scope: WORKLOAD_SELECTOR                        # GLOBAL | NAMESPACE | WORKLOAD_SELECTOR
//     action: DENY                                    # ALLOW | DENY
//     rules: [{clauses: [{matches: [{namespaces: [{exact: foo}], source_ips: ["10.0.0.0/8"],
//                                    service_accounts: [{namespace: foo, service_account: bar}]}]}]}]
//
// Field names follow the proto (snake_case); protojson's lowerCamelCase spellings are accepted too.
// Each service and workload meets the same rules as one from istiod (model_validate.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/src/model/model.hpp"
#include "common/yaml_tree.hpp"

namespace kmesh {

struct ConfigError {
    std::vector<std::string> problems;  // each names the offending field and line
    std::string summary() const;
};

// YAML (or JSON, which YAML contains) text to the model, streamed (no document tree).
std::variant<Model, ConfigError> parse_config_yaml(const std::string& text);
// The second half of parse_config_yaml: the document tree to the model.
std::variant<Model, ConfigError> parse_config_tree(const YamlNode& root);

inline constexpr uint64_t kDefaultMaxConfigBytes = 64ull << 20;

// What stat says about a file's content: an unchanged stamp means no need to parse it again.
struct FileStamp {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileStamp&) const = default;
};

// Stats the file (following symlinks); "" or why it cannot be read.
std::string stat_config_file(const std::string& path, FileStamp* stamp);

struct ConfigLimits {
    uint64_t max_bytes = kDefaultMaxConfigBytes;
    uint64_t max_services = 0;   // 0: no limit
    uint64_t max_workloads = 0;  // 0: no limit (the agent passes --max-backends)
};

// Reads and parses the file. Only a regular file (after following symlinks) of at most max_bytes is
// read: a FIFO would block the agent, a device like /dev/zero would never end. A file with more
// than max_services services is refused after a streaming count, before the (much larger) tree
// and model are built. *stamp, if given, is set to the stamp of what was read (zero when nothing
// was).
// A file whose text opens with '{' and is JSON is read as JSON (RapidJSON, the same schema);
// *json, if given, says whether it was.
std::variant<Model, ConfigError> load_config_file(const std::string& path, const ConfigLimits& limits = {},
                                                  FileStamp* stamp = nullptr, bool* json = nullptr);

// What load_config_file does once the file is read: the text, JSON first if it looks like JSON
// (and try_json), else YAML, streamed into the model a service or workload at a time (no document
// tree), the limits counted as items arrive (an over-limit file is refused without building the
// rest of its model). Problems, their order and wording are those of parse_config_tree.
std::variant<Model, ConfigError> parse_config_text(const std::string& text, const ConfigLimits& limits,
                                                   bool* json = nullptr, bool try_json = true);

// The number of entries of the top-level `services` sequence, counted from the YAML events
// without building a tree (memory independent of the file's size); -1 if there is no such
// sequence or the text does not parse (the full parser then says why).
long count_config_services(const std::string& text);
// The same for any top-level sequence ("workloads").
long count_config_entries(const std::string& text, std::string_view key);

}  // namespace kmesh
