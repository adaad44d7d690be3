// kmesh-daemon: the Kmesh node agent.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <map>
#include <string>
#include <vector>

#include "agent/src/agent.hpp"

int main(int argc, char** argv) {
    CLI::App app{"kmesh-daemon: loads the Kmesh eBPF data plane and keeps its maps in sync with the mesh"};
    kmesh::AgentOptions opt;
    std::string log_level = "info", locality;
    kmesh::xds::ClientOptions xds;
    xds.root_cert_path = "/var/run/secrets/istio/root-cert.pem";
    xds.token_path = "/var/run/secrets/tokens/istio-token";
    std::string pod_name, pod_namespace = "kmesh-system", instance_ip;
    // The release, the programs (SHA-256 of the embedded BPF object) and the map layout version.
    app.set_version_flag("--version", [] { return kmesh::version_text("kmesh-daemon"); });

    app.add_option("--bpffs-root", opt.layout.bpffs_root, "bpffs mount under which kmesh/ is pinned")
        ->capture_default_str();
    auto* config = app.add_option("--config", opt.config_path,
                                  "standalone mode: mesh config file (YAML, Istio workload API shape)");
    auto* address = app.add_option("--xds-address", xds.address, "istiod, e.g. istiod.istio-system.svc:15012")
                        ->envname("XDS_ADDRESS")
                        ->excludes(config);
    app.add_flag("--xds-plaintext", xds.plaintext, "no TLS to istiod (tests only)");
    app.add_option("--root-cert", xds.root_cert_path, "mesh root CA (PEM) to verify istiod")
        ->capture_default_str();
    app.add_option("--token-file", xds.token_path, "service account token for istiod (re-read on reconnect)")
        ->capture_default_str();
    app.add_option("--cluster-id", xds.cluster_id, "mesh cluster id")
        ->envname("CLUSTER_ID")
        ->capture_default_str();
    app.add_option("--node-name", opt.node.node, "this node's name")->envname("NODE_NAME");
    app.add_option("--network", opt.node.network, "this node's mesh network (for NETWORK routing preference)")
        ->envname("NETWORK");
    app.add_option("--pod-name", pod_name, "this agent's pod")->envname("POD_NAME");
    app.add_option("--pod-namespace", pod_namespace, "this agent's namespace")
        ->envname("POD_NAMESPACE")
        ->capture_default_str();
    app.add_option("--instance-ip", instance_ip, "this agent's IP")->envname("INSTANCE_IP");
    std::string mode = "ambient", istio_version = "1.24", service_account, mesh_id = "cluster.local";
    std::vector<std::string> pod_labels;
    app.add_option("--mode", mode,
                   "ambient: Istio's workload API (Delta xDS, or --config in its YAML shape); kernel-native: "
                   "the Envoy config a sidecar gets (SotW ADS: CDS/EDS/LDS/RDS, or --config as a bundle of "
                   "those resources), applied at connect() (docs/kernel-native.md)")
        ->check(CLI::IsMember({"ambient", "kernel-native"}))
        ->envname("KMESH_MODE")
        ->capture_default_str();
    app.add_option(
           "--istio-version", istio_version,
           "kernel-native: ISTIO_VERSION sent to istiod (which shapes the sidecar config it generates)")
        ->capture_default_str();
    app.add_option("--service-account", service_account,
                   "kernel-native: this agent's service account (SERVICE_ACCOUNT; istiod checks it against "
                   "the token)")
        ->envname("SERVICE_ACCOUNT");
    app.add_option("--mesh-id", mesh_id, "kernel-native: MESH_ID sent to istiod")->capture_default_str();
    app.add_option("--pod-label", pod_labels,
                   "kernel-native: a label of this agent's pod, key=value (repeatable; sent as LABELS)");
    app.add_option("--locality", locality,
                   "region/zone/subzone of this node (default: learnt from its workloads)");
    app.add_option("--admin-address", opt.admin_address, "admin server address")->capture_default_str();
    app.add_option("--admin-port", opt.admin_port, "admin server port (0: none)")->capture_default_str();
    // Telemetry (docs/telemetry.md).
    app.add_option("--metrics-address", opt.metrics_address,
                   "Prometheus endpoint address (/stats/prometheus; all of the agent's network namespace "
                   "by default, so Prometheus can scrape the node)")
        ->capture_default_str();
    app.add_option("--metrics-port", opt.metrics_port, "Prometheus endpoint port (0: none)")
        ->capture_default_str();
    std::string accesslog = opt.telemetry.initial.access_log ? "on" : "off";
    app.add_option("--accesslog", accesslog,
                   "one log line per closed or denied connection (switchable at run time: POST "
                   "/debug/monitoring, kmeshctl monitoring)")
        ->check(CLI::IsMember({"on", "off"}))
        ->capture_default_str();
    app.add_option("--accesslog-rate", opt.telemetry.access_log_rate,
                   "access-log lines per second at most (burst the same; 0: no limit); lines over it are "
                   "counted in kmesh_accesslog_dropped_total")
        ->capture_default_str();
    unsigned series_grace = static_cast<unsigned>(opt.telemetry.series_grace.count());
    app.add_option("--metrics-series-grace", series_grace,
                   "seconds the series of a workload or service that left the mesh are kept")
        ->capture_default_str();
    app.add_option("--max-services", opt.sizes.services, "service map capacity")->capture_default_str();
    app.add_option("--max-frontends", opt.sizes.frontends, "(VIP, port) frontend map capacity")
        ->capture_default_str();
    app.add_option("--max-endpoints", opt.sizes.endpoints, "service endpoint map capacity")
        ->capture_default_str();
    app.add_option("--max-backends", opt.sizes.backends, "workload (backend) map capacity")
        ->capture_default_str();
    app.add_option("--max-ports", opt.sizes.ports, "per-workload target port map capacity")
        ->capture_default_str();
    // Authorization tables, per generation (the kernel maps hold two while a change is published).
    auto& az = opt.sizes.authz;
    app.add_option("--max-authz-policies", az.policies, "authorization policies (and their counter slots)")
        ->capture_default_str();
    app.add_option("--max-authz-rows", az.rows, "authorization match groups, all policies together")
        ->capture_default_str();
    app.add_option("--max-authz-sets", az.sets, "distinct applicable-policy lists of local workloads")
        ->capture_default_str();
    app.add_option("--max-authz-set-entries", az.setpol, "entries of those lists together")
        ->capture_default_str();
    app.add_option("--max-authz-destinations", az.dsts, "local workload addresses with authorization")
        ->capture_default_str();
    app.add_option("--max-authz-entries", az.entries, "identity-set, CIDR and port entries (each)")
        ->capture_default_str();
    app.add_option("--max-authz-identities", az.idents, "source addresses with a known identity")
        ->capture_default_str();
    app.add_option("--max-authz-cache", az.cache, "authorization verdict cache entries")
        ->capture_default_str();
    app.add_option("--max-waypoints", opt.sizes.waypoints, "waypoint map capacity (distinct waypoints)")
        ->capture_default_str();
    app.add_option("--max-waypoint-addresses", opt.sizes.waypoint_addrs,
                   "addresses (service VIPs, workload addresses) with a waypoint")
        ->capture_default_str();
    app.add_option("--max-waypoint-sockets", opt.sizes.waypoint_sockets,
                   "open connections to waypoints tracked for the TLV at once")
        ->capture_default_str();
    app.add_option("--max-udp-sockets", opt.sizes.udp_sockets,
                   "UDP sockets whose datagrams to service VIPs are remembered for reply translation (LRU: "
                   "beyond it the least recently used socket's replies show the endpoint's address)")
        ->capture_default_str();
    std::string sockmap = opt.sizes.accel.enabled ? "on" : "off";
    app.add_option("--sockmap", sockmap,
                   "same-node acceleration: connections between two enrolled pods of this node skip TCP/IP "
                   "through a sockhash and sk_msg redirect (docs/sockmap.md)")
        ->check(CLI::IsMember({"on", "off"}))
        ->capture_default_str();
    app.add_option("--max-accel-sockets", opt.sizes.accel.max_sockets,
                   "sockets of accelerated connections tracked at once (both ends count)")
        ->capture_default_str();
    std::string map_batch = opt.map_batch ? "on" : "off";
    app.add_option("--map-batch", map_batch,
                   "write the service maps with batched bpf() calls (one per map and stage); off: one call "
                   "per entry")
        ->check(CLI::IsMember({"on", "off"}))
        ->capture_default_str();
    app.add_option("--max-members", opt.sizes.members,
                   "(service, endpoint workload) membership map capacity (km_member)")
        ->capture_default_str();
    app.add_option("--max-splits", opt.sizes.splits,
                   "weighted-cluster entries (km_split; kernel-native mode's weighted clusters)")
        ->capture_default_str();
    app.add_option("--max-circuit-breakers", opt.sizes.cb,
                   "(client pod, service) connection counts for max_connections (km_cb; kernel-native)")
        ->capture_default_str();
    app.add_option("--max-rate-limits", opt.sizes.limits,
                   "local rate limits (km_limit_cfg; kernel-native local_ratelimit filters)")
        ->capture_default_str();
    app.add_option("--max-rate-limit-buckets", opt.sizes.ratelimits,
                   "(client pod, rate limit) token buckets (km_ratelimit; kernel-native)")
        ->capture_default_str();
    app.add_option("--max-affinity", opt.sizes.affinity,
                   "session affinity entries (client, service), least recently used evicted first")
        ->capture_default_str();
    // Connection telemetry from the kernel (docs/telemetry.md).
    std::string monitoring = opt.monitoring ? "on" : "off";
    app.add_option(
           "--monitoring", monitoring,
           "report TCP connections of enrolled pods (open, close, bytes) from the kernel for metrics; "
           "switchable at run time")
        ->check(CLI::IsMember({"on", "off"}))
        ->capture_default_str();
    app.add_option("--telemetry-ringbuf-bytes", opt.sizes.tel_ringbuf_bytes,
                   "kernel connection event ring buffer size (a power of two, at least a page); events that "
                   "find it full are dropped and counted")
        ->check([](const std::string& v) {
            uint64_t n = 0;
            auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
            if (ec != std::errc() || end != v.data() + v.size()) return std::string("not a number");
            return kmesh::check_ringbuf_bytes(n);
        })
        ->capture_default_str();
    app.add_option("--metrics-flush-interval", opt.metrics_flush_interval_s,
                   "seconds between byte reports of open connections (also done before each scrape)")
        ->check(CLI::Range(1, 3600))
        ->capture_default_str();
    app.add_option("--max-config-bytes", opt.max_config_bytes,
                   "a --config file larger than this is refused without being read")
        ->capture_default_str();
    // Tests only: acts out an upgrade across a map layout bump (maps/v<N>) with one binary.
    app.add_option("--maps-version", opt.layout.maps_version, "")->group("");
    std::string kubeconfig, enrol_pods = "auto", cgroup_root;
    app.add_option("--kubeconfig", kubeconfig, "kubeconfig for the API server (default: in-cluster config)");
    app.add_option("--enrol-pods", enrol_pods,
                   "enrol this node's pods by their istio.io/dataplane-mode labels: auto (when a kube config "
                   "and --node-name are there), on, off")
        ->check(CLI::IsMember({"auto", "on", "off"}))
        ->capture_default_str();
    std::vector<std::string> exclude_namespaces{"kube-system"};
    app.add_option("--exclude-namespaces", exclude_namespaces,
                   "namespaces never enrolled (kmesh-cni passes their pods without asking the API, so "
                   "the cluster's own components always start); the plugin's excludeNamespaces")
        ->delimiter(',')
        ->capture_default_str();
    app.add_option("--warm-cgroup", opt.warm_cgroup,
                   "empty cgroup v2 directory (created, removed at exit; relative: below the cgroup v2 "
                   "mount) that every pod program is linked to while the agent runs, so attaching a pod "
                   "never turns the kernel's hooks on (e.g. kmesh-warm; default: none)");
    std::string cni_socket;
    app.add_option("--cni-socket", cni_socket,
                   "unix socket where kmesh-cni asks whether a pod is in the mesh, answered from the "
                   "enrolment reconciler's caches (the plugin asks the API server when the agent cannot "
                   "answer); written into the plugin's config by --install-cni (default: none)");
    app.add_option("--cgroup-root", cgroup_root,
                   "cgroup v2 tree holding the pod cgroups (default: its mount)");
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
    // The CNI installer: on the daemon with --install-cni, and as one-shot `cni install|uninstall`.
    kmesh::installer::Options cni;
    bool install_cni = false;
    app.add_flag("--install-cni", install_cni,
                 "install kmesh-cni and chain it into the node's CNI config at start, and keep it there");
    app.add_option("--cni-bin-dir", cni.bin_dir, "CNI plugin directory")->capture_default_str();
    app.add_option("--cni-conf-dir", cni.conf_dir, "CNI config directory")->capture_default_str();
    app.add_option("--cni-conf-name", cni.conf_name,
                   "config file to chain into (default: the one the runtime reads, the first "
                   ".conf/.conflist/.json in byte order)");
    app.add_option("--cni-binary", cni.cni_binary,
                   "kmesh-cni to install (default: next to this executable, else on PATH)");
    app.add_option("--cni-log-file", cni.log_file, "the plugin's logFile in the chained entry")
        ->capture_default_str();
    app.add_option("--cni-service-account-dir,--service-account-dir", cni.sa_dir,
                   "token and ca.crt written into kmesh-cni's kubeconfig: in the DaemonSet, the kmesh-cni "
                   "ServiceAccount's token Secret, which outlives the agent's pod")
        ->capture_default_str();
    auto* cni_cmd = app.add_subcommand("cni", "install or uninstall kmesh-cni once, then exit")
                        ->require_subcommand(1)
                        ->fallthrough();
    auto* cni_install =
        cni_cmd
            ->add_subcommand("install",
                             "copy kmesh-cni into --cni-bin-dir, chain it into the CNI config "
                             "and write its kubeconfig (in a cluster)")
            ->fallthrough();
    auto* cni_uninstall =
        cni_cmd
            ->add_subcommand("uninstall",
                             "take kmesh-cni out of every CNI config (restoring the original bytes when "
                             "nothing else changed them), remove its kubeconfig and the binary")
            ->fallthrough();
    auto* uninstall = app.add_subcommand(
        "uninstall",
        "detach every pod and remove all pinned programs and maps. Pods stay detached (no mesh "
        "translation) after the agent is started again, until their next CNI ADD (pod re-creation) or, "
        "with enrolment by labels on, until the agent's reconciler re-enrols them at its start");
    CLI11_PARSE(app, argc, argv);

    spdlog::set_level(spdlog::level::from_str(log_level));
    opt.sizes.accel.enabled = sockmap == "on";
    opt.map_batch = map_batch == "on";
    opt.monitoring = monitoring == "on";
    opt.telemetry.initial.enabled = opt.monitoring;
    opt.telemetry.initial.access_log = accesslog == "on";
    opt.telemetry.series_grace = std::chrono::seconds(series_grace);
    opt.telemetry.cluster_id = xds.cluster_id;
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

    cni.kmesh_namespace = pod_namespace;
    cni.exclude_namespaces = exclude_namespaces;
    cni.agent_socket = cni_socket;
    cni.bpffs_root = opt.layout.bpffs_root;
    if (cni_install->parsed() || cni_uninstall->parsed()) {
        kmesh::installer::Installer installer(cni);
        auto st = cni_install->parsed() ? installer.install() : installer.uninstall();
        if (!st) {
            spdlog::error("cni {}: {}", cni_install->parsed() ? "install" : "uninstall", st.to_string());
            return 1;
        }
        if (cni_uninstall->parsed()) spdlog::info("cni uninstall: kmesh-cni removed from {}", cni.conf_dir);
        return 0;
    }
    if (install_cni) opt.install_cni = cni;
    if (uninstall->parsed()) {
        auto problems = kmesh::uninstall(opt.layout);
        if (!problems.empty()) {
            spdlog::error("uninstall: {}", problems);
            return 1;
        }
        spdlog::info("removed {}", opt.layout.kmesh_dir());
        return 0;
    }
    if (!locality.empty()) {
        auto first = locality.find('/'),
             second = locality.find('/', first == std::string::npos ? first : first + 1);
        opt.node.locality.region = locality.substr(0, first);
        if (first != std::string::npos)
            opt.node.locality.zone = locality.substr(first + 1, second - first - 1);
        if (second != std::string::npos) opt.node.locality.subzone = locality.substr(second + 1);
        opt.learn_locality = false;
    }
    opt.mode = mode == "kernel-native" ? kmesh::AgentMode::kKernelNative : kmesh::AgentMode::kAmbient;
    if (address->count() && opt.mode == kmesh::AgentMode::kKernelNative) {
        opt.node.cluster_id = xds.cluster_id;
        // A sidecar's node id and metadata (docs/design/kernel-native.md §1.1): istiod generates
        // the config a sidecar of this agent's pod would get. NAMESPACE must be the token's
        // namespace (istiod's identity check), so it is the agent's own.
        xds.node_id = "sidecar~" + instance_ip + "~" + pod_name + "." + pod_namespace + "~" + pod_namespace +
                      ".svc.cluster.local";
        xds.node_metadata = {{"NAME", pod_name},
                             {"NAMESPACE", pod_namespace},
                             {"INSTANCE_IPS", instance_ip},
                             {"NODE_NAME", opt.node.node},
                             {"CLUSTER_ID", xds.cluster_id},
                             {"MESH_ID", mesh_id},
                             {"ISTIO_VERSION", istio_version}};
        if (!service_account.empty()) xds.node_metadata["SERVICE_ACCOUNT"] = service_account;
        if (!opt.node.network.empty()) xds.node_metadata["NETWORK"] = opt.node.network;
        std::map<std::string, std::string> labels;
        for (const auto& kv : pod_labels) {
            auto eq = kv.find('=');
            if (eq == std::string::npos || eq == 0) {
                spdlog::error("--pod-label {}: expected key=value", kv);
                return 2;
            }
            labels[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
        xds.node_metadata_objects["LABELS"] = labels;
        xds.locality.set_region(opt.node.locality.region);
        xds.locality.set_zone(opt.node.locality.zone);
        xds.locality.set_sub_zone(opt.node.locality.subzone);
        opt.xds = xds;
    } else if (address->count()) {
        opt.node.cluster_id = xds.cluster_id;
        // ztunnel's node id and metadata, which istiod uses to scope what it sends.
        xds.node_id = "ztunnel~" + instance_ip + "~" + pod_name + "." + pod_namespace + "~" + pod_namespace +
                      ".svc.cluster.local";
        xds.node_metadata = {{"NAME", pod_name},
                             {"NAMESPACE", pod_namespace},
                             {"INSTANCE_IPS", instance_ip},
                             {"NODE_NAME", opt.node.node},
                             {"CLUSTER_ID", xds.cluster_id}};
        if (!opt.node.network.empty()) xds.node_metadata["NETWORK"] = opt.node.network;
        opt.xds = xds;
    } else if (opt.config_path.empty()) {
        spdlog::error("give --config FILE (standalone) or --xds-address / XDS_ADDRESS (istiod)");
        return 2;
    }
    if (enrol_pods != "off") {
        auto kube =
            kubeconfig.empty() ? kmesh::kube::load_in_cluster() : kmesh::kube::load_kubeconfig(kubeconfig);
        if (!kube && (enrol_pods == "on" || !kubeconfig.empty())) {
            spdlog::error("enrolment: no usable kube config: {}", kube.status().to_string());
            return 2;
        }
        if (kube && opt.node.node.empty()) {
            if (enrol_pods == "on") {
                spdlog::error("enrolment: --node-name / NODE_NAME is required");
                return 2;
            }
            spdlog::warn("enrolment off: no --node-name / NODE_NAME");
        } else if (kube) {
            opt.kube_api = kmesh::kube::make_client(*kube);
            opt.enrolment = kmesh::enrolment::ReconcilerOptions{
                {opt.layout, cgroup_root, pod_namespace, exclude_namespaces}, opt.node.node};
            opt.enrolment->cni_socket = cni_socket;
        } else {
            spdlog::info("enrolment off: not in a cluster ({})", kube.status().message());
        }
    }
    std::string error;
    auto agent = kmesh::Agent::start(opt, &error);
    if (!agent) {
        spdlog::error("{}", error);
        return 1;
    }
    return agent->run();
}
