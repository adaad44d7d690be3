// The CNI installer's pure transformations: which file in the conf dir the runtime reads, chaining
// kmesh-cni into it and taking it out again, the name of the saved original, and the plugin's
// kubeconfig. No filesystem access here (installer.hpp does that), so each rule is unit-tested on
// bytes.
//
// Shapes produced (the entry is always the last plugin, and only once):
//   <name>.conflist {..., "plugins": [<every plugin as it was>..., <entry>]}  (all other members kept,
//                                                                            in their order)
//   <stem>.conf|.json {<plugin>} becomes <stem>.conflist
//       {"cniVersion": <plugin's, when it has one>, "name": <plugin's name or "">,
//        "plugins": [<the plugin object unchanged, cniVersion and name included>, <entry>]}
//   which is libcni's ConfListFromConf upconversion, so the runtime runs the same plugin config.
//   <entry> = {"type": "kmesh-cni", "kubeConfig": <only with a kubeconfig>, "excludeNamespaces": [...],
//              "kmeshNamespace": ..., "bpffsRoot": <only when not /sys/fs/bpf>, "logFile": ...,
//              "agentSocket": <only with a kubeconfig and the agent's --cni-socket>}
// A file we rewrite is serialised by RapidJSON (2-space indent, trailing newline), member order kept;
// a file that already ends with the wanted entry is left byte for byte as it is.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.hpp"

namespace kmesh::installer {

inline constexpr const char* kPluginType = "kmesh-cni";
inline constexpr const char* kKubeconfigName = "kmesh-cni-kubeconfig";
inline constexpr const char* kDefaultBpffsRoot = "/sys/fs/bpf";

// What the chained entry says (see the header comment for the JSON).
struct ChainEntry {
    std::optional<std::string> kube_config;  // path of the kubeconfig, when one was written
    std::vector<std::string> exclude_namespaces{"kube-system"};
    std::string kmesh_namespace = "kmesh-system";
    std::string bpffs_root = kDefaultBpffsRoot;  // written only when it is not the default
    std::string log_file = "/var/log/kmesh-cni.log";
    std::string agent_socket;  // written (agentSocket) only when set and with a kube_config
};
// The entry as a JSON object (compact), for logs and tests.
std::string entry_json(const ChainEntry& entry);

// libcni's file rules (libcni.ConfFiles + sort.Strings, as containerd's go-cni, CRI-O and Istio's
// installer use them): a file is a config when filepath.Ext of its name is .conf, .conflist or
// .json (dotfiles included: Ext(".x.conf") is ".conf"), and the runtime takes the first in byte
// order.
bool is_config_name(std::string_view name);
bool is_conflist_name(std::string_view name);
// The config names among `names`, sorted as the runtime sorts them.
std::vector<std::string> config_candidates(std::vector<std::string> names);
// Ok when the runtime could load the file as its network: a .conflist is an object with a string
// "name" and a non-empty "plugins" array of objects with a string "type"; a .conf/.json is an object
// with a string "type". Like CRI-O and Istio, the installer skips a file that fails this and takes
// the next one.
Status validate_config(std::string_view name, std::string_view bytes);

// The name the chained file gets: a .conflist keeps its name, <stem>.conf/.json becomes
// <stem>.conflist.
std::string chained_name(std::string_view name);

struct Chained {
    bool changed = false;    // false: `bytes` is the input, already chained as wanted
    bool had_entry = false;  // the input already had a kmesh-cni entry (then nothing is saved)
    std::string name;        // file name of the result
    std::string bytes;
};
// Chains the entry as the last plugin. An existing kmesh-cni entry (or several) is replaced by the
// wanted one at the end. Refuses (kInvalidArgument) what the runtime could not load, and a
// .conf/.json that is kmesh-cni itself.
Result<Chained> chain(std::string_view name, std::string_view bytes, const ChainEntry& entry);

struct Unchained {
    bool changed = false;  // false: there was no kmesh-cni entry
    std::string bytes;
};
// Removes every kmesh-cni entry from a .conflist. A list that would be left with no plugin is
// refused (kInvalidArgument): libcni would reject the file, so it is left for a person to decide.
Result<Unchained> unchain(std::string_view bytes);

// True when `current` is exactly (byte for byte) what chain() makes of the original, with the
// kmesh-cni entry `current` ends with: then restoring the original loses nothing anyone wrote.
bool is_chain_of(std::string_view original_name, std::string_view original_bytes, std::string_view current);

// The saved original of a config file we chained: a dotfile in the conf dir whose extension
// (".orig") libcni does not read, so the runtime never sees it. Kept in the conf dir because that
// is the one host directory the agent's DaemonSet already mounts read-write and that survives
// the agent, next to the file it restores; a separate state dir would need another hostPath.
std::string saved_name(std::string_view config_name);
// The config name a saved file belongs to, or nullopt when `file` is not one.
std::optional<std::string> config_of_saved(std::string_view file);

// Kubeconfig for the plugin: the API server URL (an IPv6 host bracketed), the CA (PEM, as
// certificate-authority-data; omitted when empty) and the service-account token inline (the
// plugin runs on the host, where the agent's token path does not exist).
std::string server_url(std::string_view host, std::string_view port);
std::string kubeconfig_yaml(std::string_view server, std::string_view ca_pem, std::string_view token);
std::string base64(std::string_view data);

}  // namespace kmesh::installer
