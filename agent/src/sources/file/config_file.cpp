#include "agent/src/sources/file/config_file.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <set>
#include <string_view>

#include "agent/src/model/model_validate.hpp"
#include "bpf/kmesh_abi.h"
#include "common/yaml_tree.hpp"

namespace kmesh {

namespace {

// Where a value sits ("config.workloads[3].addresses[0]"), for error messages only: a chain of
// frames on the stack, formatted when a problem is reported. Building the text for every field
// (as this parser did) cost an allocation per field, a large part of the tree-to-model phase at
// 10k services (docs/benchmarks.md).
struct Path {
    const Path* parent = nullptr;
    std::string_view name;  // a field, or the root's name
    long index = -1;        // an item of a list (name empty)

    explicit Path(std::string_view root) : name(root) {}
    Path(const Path& up, std::string_view field) : parent(&up), name(field) {}
    Path(const Path& up, size_t i) : parent(&up), index(static_cast<long>(i)) {}

    std::string str() const {
        std::string out = parent ? parent->str() : std::string();
        if (index >= 0) return out + fmt::format("[{}]", index);
        if (parent) out += '.';
        out += name;
        return out;
    }
};

// protojson accepts both "service_port" and "servicePort"; normalise to the proto name. Returns
// the key itself when it has no capitals (the common case, no copy), else its snake_case in *buf.
std::string_view snake_case(const std::string& key, std::string* buf) {
    if (std::none_of(key.begin(), key.end(), [](char c) { return c >= 'A' && c <= 'Z'; })) return key;
    buf->clear();
    for (char c : key) {
        if (c >= 'A' && c <= 'Z') {
            *buf += '_';
            *buf += static_cast<char>(c - 'A' + 'a');
        } else {
            *buf += c;
        }
    }
    return *buf;
}

class Parser {
  public:
    std::vector<std::string> problems;

    void fail(const YamlNode& at, const Path& path, const std::string& what) {
        problems.push_back(fmt::format("{} (line {}): {}", path.str(), at.line, what));
    }

    // Calls fn(field, value, path) for every key of a mapping, rejecting keys outside `allowed` and
    // keys given twice. The field passed is the entry of `allowed` (a literal: it outlives the call).
    template <typename Fn>
    void fields(const YamlNode& node, const Path& path, std::initializer_list<std::string_view> allowed,
                Fn&& fn) {
        if (!node.is_mapping()) {
            fail(node, path, "expected a mapping");
            return;
        }
        uint64_t seen = 0;                 // bit i: allowed[i] given
        std::vector<std::string> unknown;  // unknown keys given so far (rare)
        std::string buf;
        for (const auto& kv : node.entries) {
            std::string_view key = snake_case(kv.first.scalar, &buf);
            auto it = std::find(allowed.begin(), allowed.end(), key);
            bool twice;
            if (it != allowed.end()) {
                uint64_t bit = uint64_t{1} << (it - allowed.begin());
                twice = seen & bit;
                seen |= bit;
            } else {
                twice = std::find(unknown.begin(), unknown.end(), key) != unknown.end();
                if (!twice) unknown.emplace_back(key);
            }
            if (twice) {
                fail(kv.first, path, fmt::format("field '{}' given twice", kv.first.scalar));
                continue;
            }
            if (it == allowed.end()) {
                fail(kv.first, path, fmt::format("unknown field '{}'", kv.first.scalar));
                continue;
            }
            fn(*it, kv.second, Path(path, *it));
        }
    }

    std::string str(const YamlNode& n, const Path& path) {
        if (!n.is_scalar()) {
            fail(n, path, "expected a string");
            return {};
        }
        return n.scalar;
    }

    uint16_t port(const YamlNode& n, const Path& path, bool allow_zero) {
        std::string text = n.is_scalar() ? n.scalar : "";
        unsigned v = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size() ||
            v < (allow_zero ? 0u : 1u) || v > 65535) {
            fail(n, path, fmt::format("'{}' is not a valid port", text));
            return 0;
        }
        return static_cast<uint16_t>(v);
    }

    // A decimal number in [lo, hi].
    uint32_t number(const YamlNode& n, const Path& path, uint32_t lo, uint32_t hi) {
        std::string text = n.is_scalar() ? n.scalar : "";
        uint64_t v = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < lo || v > hi) {
            fail(n, path, fmt::format("'{}' is not a number from {} to {}", text, lo, hi));
            return lo;
        }
        return static_cast<uint32_t>(v);
    }

    std::optional<IpAddr> ip(const YamlNode& n, const Path& path) {
        std::string text;
        if (n.is_mapping()) {  // NetworkAddress {network, address}
            fields(n, path, {"network", "address"},
                   [&](std::string_view k, const YamlNode& v, const Path& p) {
                       if (k == "address") text = str(v, p);
                   });
        } else {
            text = str(n, path);
        }
        auto a = IpAddr::parse(text);
        if (!a) fail(n, path, fmt::format("'{}' is not an IP address", text));
        return a;
    }

    std::vector<IpAddr> ips(const YamlNode& n, const Path& path) {
        std::vector<IpAddr> out;
        if (!n.is_sequence()) {
            fail(n, path, "expected a list of addresses");
            return out;
        }
        for (size_t i = 0; i < n.items.size(); i++)
            if (auto a = ip(n.items[i], Path(path, i))) out.push_back(*a);
        return out;
    }

    // service_ports: a service's list (an omitted target port means the service port); a
    // workload's list keeps 0 ("the service's target port").
    std::vector<ServicePort> ports(const YamlNode& n, const Path& path, bool service_ports) {
        std::vector<ServicePort> out;
        if (!n.is_sequence()) {
            fail(n, path, "expected a list of ports");
            return out;
        }
        for (size_t i = 0; i < n.items.size(); i++) {
            Path p(path, i);
            ServicePort sp;
            bool has_service_port = false, has_target_port = false;
            fields(n.items[i], p, {"service_port", "target_port"},
                   [&](std::string_view k, const YamlNode& v, const Path& fp) {
                       if (k == "service_port") {
                           sp.service_port = port(v, fp, false);
                           has_service_port = true;
                       } else {
                           sp.target_port = port(v, fp, true);
                           has_target_port = true;
                       }
                   });
            if (!has_service_port) fail(n.items[i], p, "service_port is required");
            // As in Kubernetes, an omitted target port is the service port. An explicit 0 is the
            // workload API's named port: each workload's own entry gives the number.
            if (service_ports && !has_target_port) sp.target_port = sp.service_port;
            out.push_back(sp);
        }
        return out;
    }

    // An enum given by its proto name (or, as protojson allows, its number).
    template <typename E>
    std::optional<E> enum_value(const YamlNode& n, const Path& path, std::string_view field,
                                std::initializer_list<std::pair<std::string_view, E>> names) {
        std::string text = str(n, path);
        for (const auto& [name, value] : names)
            if (text == name) return value;
        // No name is a number, so trying the numbers second finds what one pass over both would.
        int number = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
        if (!text.empty() && ec == std::errc() && end == text.data() + text.size() &&
            text == std::to_string(number))
            for (const auto& [name, value] : names)
                if (static_cast<int>(value) == number) return value;
        std::string known;
        for (const auto& [name, value] : names) known += fmt::format("{}{}", known.empty() ? "" : ", ", name);
        fail(n, path, fmt::format("{} ({})", unknown_enum(std::string(field), "'" + text + "'"), known));
        return std::nullopt;
    }

    LoadBalancing load_balancing(const YamlNode& n, const Path& path) {
        LoadBalancing lb;
        fields(n, path, {"routing_preference", "mode", "health_policy"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (k == "mode") {
                       if (auto m = enum_value<LbMode>(v, p, "load_balancing.mode",
                                                       {{"UNSPECIFIED_MODE", LbMode::kUnspecified},
                                                        {"STRICT", LbMode::kStrict},
                                                        {"FAILOVER", LbMode::kFailover},
                                                        {"PASSTHROUGH", LbMode::kPassthrough}}))
                           lb.mode = *m;
                   } else if (k == "health_policy") {
                       if (auto h = enum_value<int>(v, p, "load_balancing.health_policy",
                                                    {{"ONLY_HEALTHY", 0}, {"ALLOW_ALL", 1}}))
                           lb.allow_unhealthy = *h == 1;
                   } else if (!v.is_sequence()) {
                       fail(v, p, "expected a list of scopes");
                   } else {
                       for (size_t i = 0; i < v.items.size(); i++)
                           if (auto sc = enum_value<LbScope>(v.items[i], Path(p, i),
                                                             "load_balancing.routing_preference",
                                                             {{"REGION", LbScope::kRegion},
                                                              {"ZONE", LbScope::kZone},
                                                              {"SUBZONE", LbScope::kSubzone},
                                                              {"NODE", LbScope::kNode},
                                                              {"CLUSTER", LbScope::kCluster},
                                                              {"NETWORK", LbScope::kNetwork}}))
                               lb.routing_preference.push_back(*sc);
                   }
               });
        return lb;
    }

    // The shared rules (model_validate), reported at the object's line.
    void validated(const YamlNode& n, const Path& path, const std::vector<std::string>& problems_found) {
        for (const auto& p : problems_found) fail(n, path, p);
    }

    // GatewayAddress: {address: IP | {network, address}, hbone_mtls_port} or
    // {hostname: {namespace, hostname}, hbone_mtls_port}.
    Waypoint gateway(const YamlNode& n, const Path& path) {
        Waypoint w;
        int kinds = 0;
        fields(n, path, {"address", "hostname", "hbone_mtls_port"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (k == "hbone_mtls_port") {
                       w.port = port(v, p, true);
                   } else if (k == "address") {
                       kinds++;
                       w.address = ip(v, p);
                   } else {
                       kinds++;
                       std::string ns, host;
                       fields(v, p, {"namespace", "hostname"},
                              [&](std::string_view hk, const YamlNode& hv, const Path& hp) {
                                  (hk == "namespace" ? ns : host) = str(hv, hp);
                              });
                       if (v.is_mapping() && (ns.empty() || host.empty()))
                           fail(v, p, "namespace and hostname are both required");
                       w.hostname = ns + "/" + host;
                   }
               });
        if (n.is_mapping() && kinds != 1) fail(n, path, "a waypoint has exactly one of address, hostname");
        return w;
    }

    Service service(const YamlNode& n, const Path& path) {
        Service s;
        // Load-balancing options of the file only (Istio's workload API has none): loadBalancer
        // RANDOM (default) | ROUND_ROBIN, sessionAffinity NONE (default) | CLIENT_IP with
        // sessionAffinityTimeoutSeconds (Kubernetes' spellings roundRobin, ClientIP, None too).
        std::optional<bool> affinity;
        std::optional<uint32_t> timeout;
        const YamlNode* timeout_node = nullptr;
        fields(n, path,
               {"name", "namespace", "hostname", "addresses", "ports", "load_balancing", "waypoint",
                "load_balancer", "session_affinity", "session_affinity_timeout_seconds"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (k == "load_balancer")
                       if (auto rr = enum_value<int>(
                               v, p, "load_balancer",
                               {{"RANDOM", 0}, {"ROUND_ROBIN", 1}, {"random", 0}, {"roundRobin", 1}}))
                           s.round_robin = *rr == 1;
                   if (k == "session_affinity")
                       if (auto a =
                               enum_value<int>(v, p, "session_affinity",
                                               {{"NONE", 0}, {"CLIENT_IP", 1}, {"None", 0}, {"ClientIP", 1}}))
                           affinity = *a == 1;
                   if (k == "session_affinity_timeout_seconds") {
                       timeout = number(v, p, 1, KMESH_MAX_AFFINITY_TIMEOUT);
                       timeout_node = &v;
                   }
                   if (k == "waypoint") s.waypoint = gateway(v, p);
                   if (k == "name") s.name = str(v, p);
                   if (k == "namespace") s.namespace_ = str(v, p);
                   if (k == "hostname") s.hostname = str(v, p);
                   if (k == "addresses") s.addresses = ips(v, p);
                   if (k == "ports") s.ports = ports(v, p, true);
                   if (k == "load_balancing") s.load_balancing = load_balancing(v, p);
               });
        if (timeout && !affinity.value_or(false))
            fail(*timeout_node, Path(path, "session_affinity_timeout_seconds"),
                 "only meaningful with session_affinity: CLIENT_IP");
        if (affinity.value_or(false)) s.affinity_timeout = timeout.value_or(KMESH_DEFAULT_AFFINITY_TIMEOUT);
        validated(n, path, validate_service(s));
        return s;
    }

    Workload workload(const YamlNode& n, const Path& path) {
        Workload w;
        std::string node, cluster_id;
        WorkloadNaming naming;
        fields(n, path,
               {"uid", "name", "namespace", "addresses", "services", "status", "network_mode", "node",
                "trust_domain", "service_account", "authorization_policies", "waypoint", "capacity",
                "workload_name", "canonical_name", "canonical_revision", "cluster_id"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   // Names telemetry labels its series with (docs/telemetry.md).
                   if (k == "workload_name") naming.workload_name = str(v, p);
                   if (k == "canonical_name") naming.canonical_name = str(v, p);
                   if (k == "canonical_revision") naming.canonical_revision = str(v, p);
                   if (k == "cluster_id") cluster_id = str(v, p);
                   // Workload.capacity: its share of new connections; 0 drains it.
                   if (k == "capacity") w.capacity = number(v, p, 0, UINT32_MAX);
                   if (k == "waypoint") w.waypoint = Waypoint::intern(gateway(v, p));
                   if (k == "uid") w.uid = str(v, p);
                   if (k == "trust_domain") w.trust_domain = str(v, p);
                   if (k == "service_account") w.service_account = str(v, p);
                   if (k == "authorization_policies") w.authorization_policies = strings(v, p);
                   if (k == "name") w.name = str(v, p);
                   if (k == "namespace") w.namespace_ = str(v, p);
                   if (k == "addresses") {
                       auto list = ips(v, p);  // Workload keeps its first address inline
                       w.addresses.assign(list.begin(), list.end());
                   }
                   if (k == "node") node = str(v, p);
                   if (k == "status")
                       if (auto st = enum_value<WorkloadStatus>(v, p, "status",
                                                                {{"HEALTHY", WorkloadStatus::kHealthy},
                                                                 {"UNHEALTHY", WorkloadStatus::kUnhealthy}}))
                           w.status = *st;
                   if (k == "network_mode")
                       if (auto m = enum_value<NetworkMode>(v, p, "network_mode",
                                                            {{"STANDARD", NetworkMode::kStandard},
                                                             {"HOST_NETWORK", NetworkMode::kHostNetwork}}))
                           w.network_mode = *m;
                   if (k == "services") {
                       if (!v.is_mapping()) {
                           fail(v, p, "expected a mapping of \"namespace/hostname\" to {ports: [...]}");
                           return;
                       }
                       for (const auto& kv : v.entries) {
                           std::string svc = kv.first.scalar;
                           Path sp(p, std::string_view(svc));
                           std::vector<ServicePort> list;
                           if (!kv.second.is_null())
                               fields(kv.second, sp, {"ports"},
                                      [&](std::string_view, const YamlNode& pv, const Path& pp) {
                                          list = ports(pv, pp, false);
                                      });
                           w.services[svc] = list;
                       }
                   }
               });
        if (!node.empty() || !cluster_id.empty()) w.placement = Placement::intern({node, "", cluster_id, {}});
        w.naming = WorkloadNaming::intern(std::move(naming));
        validated(n, path, validate_workload(w));
        return w;
    }

    std::vector<std::string> strings(const YamlNode& n, const Path& path) {
        std::vector<std::string> out;
        if (!n.is_sequence()) {
            fail(n, path, "expected a list of strings");
            return out;
        }
        for (size_t i = 0; i < n.items.size(); i++) out.push_back(str(n.items[i], Path(path, i)));
        return out;
    }

    // A list of items, each parsed by fn(item, "path[i]").
    template <typename T, typename Fn>
    std::vector<T> list(const YamlNode& n, const Path& path, const char* what, Fn&& fn) {
        std::vector<T> out;
        if (n.is_null()) return out;
        if (!n.is_sequence()) {
            fail(n, path, fmt::format("expected a list of {}", what));
            return out;
        }
        for (size_t i = 0; i < n.items.size(); i++) out.push_back(fn(n.items[i], Path(path, i)));
        return out;
    }

    bool boolean(const YamlNode& n, const Path& path) {
        std::string t = n.is_scalar() ? n.scalar : "";
        if (t == "true") return true;
        if (t == "false") return false;
        fail(n, path, fmt::format("'{}' is not true or false", t));
        return false;
    }

    // {exact: s} | {prefix: s} | {suffix: s} | {presence: true}: exactly one.
    StringMatch string_match(const YamlNode& n, const Path& path) {
        StringMatch m;
        int kinds = 0;
        fields(n, path, {"exact", "prefix", "suffix", "presence"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   kinds++;
                   if (k == "presence") {
                       if (!boolean(v, p)) fail(v, p, "presence can only be true");
                       m.kind = StringMatch::Kind::kPresence;
                       return;
                   }
                   m.kind = k == "exact"    ? StringMatch::Kind::kExact
                            : k == "prefix" ? StringMatch::Kind::kPrefix
                                            : StringMatch::Kind::kSuffix;
                   m.value = str(v, p);
               });
        if (n.is_mapping() && kinds != 1)
            fail(n, path, "a string match takes exactly one of exact, prefix, suffix, presence");
        return m;
    }

    ServiceAccountMatch service_account_match(const YamlNode& n, const Path& path) {
        ServiceAccountMatch m;
        bool ns = false, sa = false;
        fields(n, path, {"namespace", "service_account"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (k == "namespace") {
                       m.namespace_ = str(v, p);
                       ns = true;
                   } else {
                       m.service_account = str(v, p);
                       sa = true;
                   }
               });
        if (n.is_mapping() && (!ns || !sa)) fail(n, path, "namespace and service_account are both required");
        return m;
    }

    // "10.0.0.0/24", "fd00::/64", or one host ("10.0.0.1": the full width).
    Cidr cidr(const YamlNode& n, const Path& path) {
        std::string text = str(n, path);
        std::string addr = text;
        std::optional<unsigned> len;
        if (auto slash = text.find('/'); slash != std::string::npos) {
            addr = text.substr(0, slash);
            unsigned v = 0;
            std::string l = text.substr(slash + 1);
            auto [end, ec] = std::from_chars(l.data(), l.data() + l.size(), v);
            if (l.empty() || ec != std::errc() || end != l.data() + l.size()) {
                fail(n, path, fmt::format("'{}' is not an address or CIDR", text));
                return {};
            }
            len = v;
        }
        auto ip = IpAddr::parse(addr);
        if (!ip) {
            fail(n, path, fmt::format("'{}' is not an address or CIDR", text));
            return {};
        }
        // IPv4 written IPv4-mapped is IPv4: its prefix counts the last 32 bits.
        bool mapped = ip->is_v4() && addr.find(':') != std::string::npos;
        unsigned width = ip->is_v4() ? 32 : 128;
        unsigned v = len.value_or(mapped ? 128 : width);
        if (mapped) {
            if (v < 96) {
                fail(n, path, fmt::format("'{}': an IPv4-mapped CIDR needs a prefix of at least 96", text));
                return {};
            }
            v -= 96;
        }
        if (v > width) {
            fail(n, path,
                 fmt::format("'{}': prefix length {} longer than the address", text, len.value_or(0)));
            return {};
        }
        return Cidr{*ip, static_cast<uint8_t>(v)};
    }

    AuthzMatch authz_match(const YamlNode& n, const Path& path) {
        AuthzMatch m;
        auto sm = [&](const YamlNode& v, const Path& p) {
            return list<StringMatch>(v, p, "string matches",
                                     [&](const auto& i, const auto& ip) { return string_match(i, ip); });
        };
        auto sa = [&](const YamlNode& v, const Path& p) {
            return list<ServiceAccountMatch>(v, p, "service accounts", [&](const auto& i, const auto& ip) {
                return service_account_match(i, ip);
            });
        };
        auto ci = [&](const YamlNode& v, const Path& p) {
            return list<Cidr>(v, p, "addresses", [&](const auto& i, const auto& ip) { return cidr(i, ip); });
        };
        auto po = [&](const YamlNode& v, const Path& p) {
            return list<uint16_t>(v, p, "ports",
                                  [&](const auto& i, const auto& ip) { return port(i, ip, false); });
        };
        fields(n, path,
               {"namespaces", "not_namespaces", "principals", "not_principals", "service_accounts",
                "not_service_accounts", "source_ips", "not_source_ips", "destination_ips",
                "not_destination_ips", "destination_ports", "not_destination_ports"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (k == "namespaces") m.namespaces = sm(v, p);
                   if (k == "not_namespaces") m.not_namespaces = sm(v, p);
                   if (k == "principals") m.principals = sm(v, p);
                   if (k == "not_principals") m.not_principals = sm(v, p);
                   if (k == "service_accounts") m.service_accounts = sa(v, p);
                   if (k == "not_service_accounts") m.not_service_accounts = sa(v, p);
                   if (k == "source_ips") m.source_ips = ci(v, p);
                   if (k == "not_source_ips") m.not_source_ips = ci(v, p);
                   if (k == "destination_ips") m.destination_ips = ci(v, p);
                   if (k == "not_destination_ips") m.not_destination_ips = ci(v, p);
                   if (k == "destination_ports") m.destination_ports = po(v, p);
                   if (k == "not_destination_ports") m.not_destination_ports = po(v, p);
               });
        return m;
    }

    AuthzClause authz_clause(const YamlNode& n, const Path& path) {
        AuthzClause c;
        if (n.is_null()) return c;
        fields(n, path, {"matches"}, [&](std::string_view, const YamlNode& v, const Path& p) {
            c.matches = list<AuthzMatch>(v, p, "match groups",
                                         [&](const auto& i, const auto& ip) { return authz_match(i, ip); });
        });
        return c;
    }

    AuthzRule authz_rule(const YamlNode& n, const Path& path) {
        AuthzRule r;
        if (n.is_null()) return r;
        fields(n, path, {"clauses"}, [&](std::string_view, const YamlNode& v, const Path& p) {
            r.clauses = list<AuthzClause>(v, p, "clauses",
                                          [&](const auto& i, const auto& ip) { return authz_clause(i, ip); });
        });
        return r;
    }

    AuthzPolicy policy(const YamlNode& n, const Path& path) {
        AuthzPolicy pol;
        fields(
            n, path, {"name", "namespace", "scope", "action", "dry_run", "rules"},
            [&](std::string_view k, const YamlNode& v, const Path& p) {
                if (k == "name") pol.name = str(v, p);
                if (k == "namespace") pol.namespace_ = str(v, p);
                if (k == "dry_run") pol.dry_run = boolean(v, p);
                if (k == "scope")
                    if (auto sc =
                            enum_value<AuthzScope>(v, p, "scope",
                                                   {{"GLOBAL", AuthzScope::kGlobal},
                                                    {"NAMESPACE", AuthzScope::kNamespace},
                                                    {"WORKLOAD_SELECTOR", AuthzScope::kWorkloadSelector}}))
                        pol.scope = *sc;
                if (k == "action")
                    if (auto a = enum_value<AuthzAction>(
                            v, p, "action", {{"ALLOW", AuthzAction::kAllow}, {"DENY", AuthzAction::kDeny}}))
                        pol.action = *a;
                if (k == "rules")
                    pol.rules = list<AuthzRule>(
                        v, p, "rules", [&](const auto& i, const auto& ip) { return authz_rule(i, ip); });
            });
        if (n.is_mapping() && pol.name.empty()) fail(n, path, "name is required");
        return pol;
    }

    // One item of a top-level list (k: "services", "workloads" or "policies") into the model.
    void top_item(Model& m, std::string_view k, const YamlNode& item, const Path& ip) {
        if (k == "policies") {
            AuthzPolicy pol = policy(item, ip);
            std::string key = pol.key();
            if (!m.policies.try_emplace(key, std::move(pol)).second)
                fail(item, ip, fmt::format("duplicate policy '{}'", key));
        } else if (k == "services") {
            Service s = service(item, ip);
            std::string key = s.key();
            if (!m.services.try_emplace(key, std::move(s)).second)
                fail(item, ip, fmt::format("duplicate service '{}'", key));
        } else {
            Workload w = workload(item, ip);
            std::string uid = w.uid;
            if (!m.workloads.try_emplace(uid, std::move(w)).second)
                fail(item, ip, fmt::format("duplicate workload uid '{}'", uid));
        }
    }

    Model model(const YamlNode& root) {
        Model m;
        // An empty document is far more often a file caught mid-write or a failed template than an
        // intended empty mesh, which is written "services: []".
        if (root.is_null()) {
            problems.push_back("the config is empty; write `services: []` for an empty mesh");
            return m;
        }
        fields(root, Path("config"), {"services", "workloads", "policies"},
               [&](std::string_view k, const YamlNode& v, const Path& p) {
                   if (!v.is_sequence() && !v.is_null()) {
                       fail(v, p, "expected a list");
                       return;
                   }
                   for (size_t i = 0; i < v.items.size(); i++) top_item(m, k, v.items[i], Path(p, i));
               });
        check_cross_references(m);
        return m;
    }

    // Whole-file consistency, which only a file can have: istiod may give one VIP to two services
    // for a moment (MeshState elects one), a file that does so is a mistake to point out.
    void check_cross_references(const Model& m) {
        std::map<IpAddr, std::string> vip_owner;
        for (const auto& [key, s] : m.services)
            for (const auto& a : s.addresses) {
                auto [it, fresh] = vip_owner.emplace(a, key);
                if (!fresh && it->second != key)
                    problems.push_back(
                        fmt::format("services '{}' and '{}' share the VIP {}", it->second, key, a.str()));
                else if (!fresh)
                    problems.push_back(fmt::format("service '{}' lists VIP {} twice", key, a.str()));
            }
    }
};

}  // namespace

std::string ConfigError::summary() const {
    std::string out;
    for (const auto& p : problems) out += (out.empty() ? "" : "; ") + p;
    return out;
}

std::variant<Model, ConfigError> parse_config_tree(const YamlNode& root) {
    Parser p;
    Model m = p.model(root);
    if (!p.problems.empty()) return ConfigError{p.problems};
    return m;
}

namespace {

// The document streamed straight into the model, a top-level item at a time: what
// parse_config_tree does with the whole tree, in the same order and with the same messages, while
// only one service or workload exists as a tree. The --max-* limits count items as they arrive:
// past a limit items are counted and dropped, so a file too large for the maps costs neither its
// tree nor its model (the separate counting pass this replaces read the whole file once more).
class ModelStream : public YamlStreamHandler {
  public:
    explicit ModelStream(const ConfigLimits& limits) : limits_(limits) {}

    void root(const YamlNode& root) override { model_ = parser_.model(root); }
    void key(const YamlNode& key) override {
        // As Parser::fields on the root mapping.
        list_ = kNone;
        std::string buf;
        std::string_view k = snake_case(key.scalar, &buf);
        bool twice = std::find(seen_.begin(), seen_.end(), k) != seen_.end();
        if (!twice) seen_.emplace_back(k);
        if (twice) {
            parser_.fail(key, root_path_, fmt::format("field '{}' given twice", key.scalar));
        } else if (k == "services") {
            list_ = kServices;
        } else if (k == "workloads") {
            list_ = kWorkloads;
        } else if (k == "policies") {
            list_ = kPolicies;
        } else {
            parser_.fail(key, root_path_, fmt::format("unknown field '{}'", key.scalar));
        }
        index_ = 0;
    }
    void value(const YamlNode& v) override {
        if (list_ != kNone && !v.is_null()) parser_.fail(v, Path(root_path_, name()), "expected a list");
    }
    void sequence_start(int) override {}
    void item(const YamlNode& item) override {
        if (list_ == kNone) return;
        size_t i = index_++;
        if (list_ == kServices && limits_.max_services && ++services_ > limits_.max_services) return;
        if (list_ == kWorkloads && limits_.max_workloads && ++workloads_ > limits_.max_workloads) return;
        Path list_path(root_path_, name());
        parser_.top_item(model_, name(), item, Path(list_path, i));
    }
    void sequence_end() override {}
    void root_end() override { parser_.check_cross_references(model_); }

    std::variant<Model, ConfigError> result() {
        // A mesh that cannot fit the maps is refused whatever else is wrong with it.
        if (limits_.max_services && services_ > limits_.max_services)
            return ConfigError{
                {fmt::format("{} services exceed --max-services {}", services_, limits_.max_services)}};
        if (limits_.max_workloads && workloads_ > limits_.max_workloads)
            return ConfigError{
                {fmt::format("{} workloads exceed --max-backends {}", workloads_, limits_.max_workloads)}};
        if (!parser_.problems.empty()) return ConfigError{std::move(parser_.problems)};
        return std::move(model_);
    }

  private:
    enum List { kNone, kServices, kWorkloads, kPolicies };
    std::string_view name() const {
        return list_ == kServices ? "services" : list_ == kWorkloads ? "workloads" : "policies";
    }

    ConfigLimits limits_;
    Parser parser_;
    Model model_;
    const Path root_path_{"config"};
    std::vector<std::string> seen_;
    List list_ = kNone;
    size_t index_ = 0;
    uint64_t services_ = 0, workloads_ = 0;
};

}  // namespace

std::variant<Model, ConfigError> parse_config_yaml(const std::string& text) {
    // YAML only, as before JSON was read (the fuzz target and tests give YAML).
    return parse_config_text(text, ConfigLimits{}, nullptr, false);
}

std::variant<Model, ConfigError> parse_config_text(const std::string& text, const ConfigLimits& limits,
                                                   bool* json, bool try_json) {
    if (json) *json = false;
    std::string syntax;
    // JSON (the same schema; YAML contains JSON) takes RapidJSON's reader, several times faster
    // than libyaml. A text that opens with '{' but is not JSON is YAML flow syntax, parsed below.
    if (try_json && looks_like_json(text)) {
        ModelStream stream(limits);
        if (stream_json(text, stream, &syntax)) {
            if (json) *json = true;
            return stream.result();
        }
    }
    ModelStream stream(limits);
    if (!stream_yaml(text, stream, &syntax))
        return ConfigError{{fmt::format("YAML syntax error: {}", syntax)}};
    return stream.result();
}

namespace {

FileStamp stamp_of(const struct stat& st) {
    return {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
            static_cast<uint64_t>(st.st_size), st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec};
}

std::string file_type_problem(const std::string& path, const struct stat& st) {
    if (S_ISREG(st.st_mode)) return {};
    const char* what = S_ISDIR(st.st_mode)    ? "is a directory"
                       : S_ISFIFO(st.st_mode) ? "is a FIFO"
                       : S_ISCHR(st.st_mode)  ? "is a character device"
                       : S_ISBLK(st.st_mode)  ? "is a block device"
                       : S_ISSOCK(st.st_mode) ? "is a socket"
                                              : "is not a regular file";
    return fmt::format("cannot read {}: it {}; the config must be a regular file", path, what);
}

}  // namespace

std::string stat_config_file(const std::string& path, FileStamp* stamp) {
    struct stat st {};
    if (stat(path.c_str(), &st) != 0) return fmt::format("cannot read {}: {}", path, std::strerror(errno));
    *stamp = stamp_of(st);
    return {};
}

long count_config_entries(const std::string& text, std::string_view key) {
    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) return -1;
    yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()), text.size());
    int depth = 0;         // open collections
    bool key_turn = true;  // at depth 1 (the root mapping), nodes alternate key, value
    bool services_key = false;
    int seq_depth = -1;  // depth inside the services sequence, while in it
    long count = -1;
    for (bool done = false; !done;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            count = -1;
            break;
        }
        bool node_start = ev.type == YAML_SCALAR_EVENT || ev.type == YAML_ALIAS_EVENT ||
                          ev.type == YAML_MAPPING_START_EVENT || ev.type == YAML_SEQUENCE_START_EVENT;
        if (node_start) {
            if (depth == 0 && ev.type != YAML_MAPPING_START_EVENT) done = true;  // not a mapping
            if (seq_depth >= 0 && depth == seq_depth) count++;
            if (depth == 1) {
                if (key_turn) {
                    services_key = ev.type == YAML_SCALAR_EVENT &&
                                   std::string_view(reinterpret_cast<const char*>(ev.data.scalar.value),
                                                    ev.data.scalar.length) == key;
                } else if (services_key && count < 0 && ev.type == YAML_SEQUENCE_START_EVENT) {
                    count = 0;
                    seq_depth = depth + 1;
                }
                key_turn = !key_turn;
            }
            if (ev.type == YAML_MAPPING_START_EVENT || ev.type == YAML_SEQUENCE_START_EVENT) depth++;
        } else if (ev.type == YAML_MAPPING_END_EVENT || ev.type == YAML_SEQUENCE_END_EVENT) {
            depth--;
            if (seq_depth >= 0 && depth < seq_depth) done = true;  // the services sequence ended
        } else if (ev.type == YAML_STREAM_END_EVENT) {
            done = true;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    return seq_depth >= 0 && depth < seq_depth ? count : -1;
}

long count_config_services(const std::string& text) { return count_config_entries(text, "services"); }

std::variant<Model, ConfigError> load_config_file(const std::string& path, const ConfigLimits& limits,
                                                  FileStamp* stamp, bool* json) {
    const uint64_t max_bytes = limits.max_bytes;
    if (stamp) *stamp = {};
    if (json) *json = false;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, signals unheard.
    int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return ConfigError{{fmt::format("cannot read {}: {}", path, std::strerror(errno))}};
    struct Closer {
        int fd;
        ~Closer() { close(fd); }
    } closer{fd};
    struct stat st {};
    if (fstat(fd, &st) != 0)
        return ConfigError{{fmt::format("cannot read {}: {}", path, std::strerror(errno))}};
    if (auto e = file_type_problem(path, st); !e.empty()) return ConfigError{{e}};
    if (static_cast<uint64_t>(st.st_size) > max_bytes)
        return ConfigError{
            {fmt::format("cannot read {}: {} bytes exceed the limit of {} bytes (--max-config-bytes)", path,
                         st.st_size, max_bytes)}};
    std::string text;
    // One byte more than stat gives, so that the read that finds EOF needs no larger buffer (growing
    // to twice the size zeroed 4 MB more for a 4 MB file).
    text.resize(
        static_cast<size_t>(std::min<uint64_t>(static_cast<uint64_t>(st.st_size) + 1, max_bytes + 1)));
    size_t got = 0;
    // Read at most one byte past the size stat gave: a file growing meanwhile is still bounded.
    for (;;) {
        if (got == text.size()) {
            if (got >= max_bytes + 1) break;
            text.resize(std::min<uint64_t>(max_bytes + 1, std::max<size_t>(got * 2, 4096)));
        }
        ssize_t n = read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ConfigError{{fmt::format("cannot read {}: {}", path, std::strerror(errno))}};
        if (n == 0) break;
        got += static_cast<size_t>(n);
    }
    if (got > max_bytes)
        return ConfigError{{fmt::format(
            "cannot read {}: more than the limit of {} bytes (--max-config-bytes)", path, max_bytes)}};
    text.resize(got);
    if (stamp) *stamp = stamp_of(st);
    // Streamed into the model, the --max-* limits counted as items arrive: no counting passes,
    // no document tree (docs/benchmarks.md, "file programming, parse to model").
    return parse_config_text(text, limits, json);
}

}  // namespace kmesh
