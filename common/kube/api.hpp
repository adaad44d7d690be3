// The slice of the Kubernetes API that Kmesh uses, shared by kmesh-cni (one GET of a pod and of its
// namespace at ADD, one PATCH) and kmesh-daemon (LIST + WATCH of the pods on its node and of all
// namespaces, PATCH). `Api` is the seam: the real `Client` (libcurl, TLS) implements it, unit tests
// fake it. Objects are decoded from the API server's JSON into the few fields Kmesh reads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.hpp"

namespace kmesh::kube {

struct ObjectMeta {
    std::string name;
    std::string namespace_;  // empty for cluster-scoped objects
    std::string uid;
    std::string resource_version;
    std::map<std::string, std::string> labels;
    std::map<std::string, std::string> annotations;
    bool deleting = false;  // metadata.deletionTimestamp is set
};

struct Pod {
    ObjectMeta meta;
    std::string node_name;  // spec.nodeName
    bool host_network = false;
    std::vector<std::string> containers;       // spec.containers[].name
    std::vector<std::string> init_containers;  // spec.initContainers[].name
    std::string phase;                         // status.phase
    std::vector<std::string> pod_ips;          // status.podIPs[].ip (status.podIP when absent)
};

struct Namespace {
    ObjectMeta meta;
};

// Decoding of one object as the API server sends it (a GET body, or a watch event's "object").
Result<Pod> parse_pod(std::string_view json);
Result<Namespace> parse_namespace(std::string_view json);

// How to reach and authenticate to the API server. Files are read when a request is made, so a
// rotated projected token or a renewed certificate is picked up without a restart.
struct ClientConfig {
    std::string server;  // https://host:port (no trailing slash)
    std::string ca_pem;  // CA bundle (PEM); or:
    std::string ca_file;
    std::string token;  // bearer token; or:
    std::string token_file;
    std::string client_cert_pem, client_key_pem;    // client certificate auth; or files:
    std::string client_cert_file, client_key_file;  //
    bool insecure_skip_tls_verify = false;          // only honoured when the loader was told to allow it
    std::chrono::milliseconds connect_timeout{2000};
    std::chrono::milliseconds request_timeout{5000};  // whole GET/PATCH/LIST; a WATCH is bounded by
                                                      // timeoutSeconds on the server instead
};

// In-cluster config: KUBERNETES_SERVICE_HOST/PORT (IPv6 hosts bracketed), the service-account
// token and CA under `sa_dir`. kNotFound when not in a cluster (no env or no token).
Result<ClientConfig> load_in_cluster(
    const std::string& sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount");
// A kubeconfig file (YAML or JSON): `context` or else current-context; cluster server, CA data or
// file (relative paths against the kubeconfig's directory), user token / tokenFile / client
// certificate and key (data or file). insecure-skip-tls-verify is refused (kInvalidArgument) unless
// `allow_insecure`. exec/auth-provider users are refused with a message naming them.
Result<ClientConfig> load_kubeconfig(const std::string& path, const std::string& context = "",
                                     bool allow_insecure = false);

// A merge patch of annotations: a value sets the key, nullopt removes it.
using AnnotationPatch = std::map<std::string, std::optional<std::string>>;

template <class T>
struct List {
    std::vector<T> items;
    std::string resource_version;  // the list's metadata.resourceVersion: where a WATCH resumes
};

enum class EventType { kAdded, kModified, kDeleted, kBookmark };

template <class T>
struct WatchEvent {
    EventType type = EventType::kAdded;
    T object;  // for kBookmark only meta.resource_version is set
};

// What a WATCH call does with its stream. Return false from on_event to end the watch early.
template <class T>
using WatchHandler = std::function<bool(const WatchEvent<T>&)>;

struct ListOptions {
    std::string field_selector;  // e.g. "spec.nodeName=node-1"
    std::string label_selector;
};

// The calls Kmesh makes. Errors map to Errc: transport failures kUnavailable, deadline kTimeout,
// 401 kUnauthenticated, 403 kPermissionDenied, 404 kNotFound, 409 kConflict, 410 (HTTP or a watch
// ERROR event with code 410) kGone, other 4xx kInvalidArgument, 5xx kUnavailable, undecodable body
// kDataLoss. Messages name the request and the API server's own message (never the token).
class Api {
  public:
    virtual ~Api() = default;
    virtual Result<Pod> get_pod(const std::string& ns, const std::string& name) = 0;
    virtual Result<Namespace> get_namespace(const std::string& name) = 0;
    virtual Status patch_pod_annotations(const std::string& ns, const std::string& name,
                                         const AnnotationPatch& patch) = 0;
    virtual Result<List<Pod>> list_pods(const ListOptions& opts) = 0;
    virtual Result<List<Namespace>> list_namespaces(const ListOptions& opts) = 0;
    // One WATCH request from `resource_version` (allowWatchBookmarks=true, timeoutSeconds as
    // given). Returns Ok when the server ended the stream normally (timeout) or the handler asked to
    // stop, kGone when the position expired, other errors as above. `stop` is polled at least every
    // `poll` so that a shutdown does not wait for the server.
    virtual Status watch_pods(const ListOptions& opts, const std::string& resource_version,
                              int timeout_seconds, const WatchHandler<Pod>& handler,
                              const std::atomic<bool>& stop) = 0;
    virtual Status watch_namespaces(const ListOptions& opts, const std::string& resource_version,
                                    int timeout_seconds, const WatchHandler<Namespace>& handler,
                                    const std::atomic<bool>& stop) = 0;
};

// The real client: libcurl with TLS verification against the config's CA.
std::unique_ptr<Api> make_client(const ClientConfig& config);

// List + watch of one resource kind into a local cache, as client-go's reflector/informer does:
// LIST, then WATCH from the list's resourceVersion with bookmarks; a watch that ends normally
// resumes from the last seen resourceVersion; 410 Gone relists; errors back off (exponential,
// capped, reset after a healthy watch). Every change of the cache is delivered once, in order, to
// `on_change` (old is nullptr for an add, new is nullptr for a delete); a relist delivers the
// difference between the cache and the new list, so no event is lost or applied twice across
// reconnects. `on_synced` runs after every successful (re)list's changes are delivered.
// Callbacks run on the informer's own thread.
template <class T>
class Informer {
  public:
    struct Options {
        ListOptions list;
        int watch_timeout_seconds = 300;
        std::chrono::milliseconds backoff_initial{200};
        std::chrono::milliseconds backoff_max{30000};
    };
    using ChangeFn = std::function<void(const T* old_obj, const T* new_obj)>;
    using SyncedFn = std::function<void()>;
    using ErrorFn = std::function<void(const Status&)>;  // each failed LIST/WATCH (for logs/metrics)

    Informer(Api& api, Options options, ChangeFn on_change, SyncedFn on_synced = {}, ErrorFn on_error = {});
    ~Informer();  // stops and joins
    Informer(const Informer&) = delete;
    Informer& operator=(const Informer&) = delete;

    void start();
    void stop();
    bool synced() const;
    // Copy of the cache, keyed by "<namespace>/<name>" (or "<name>" for cluster-scoped).
    std::map<std::string, T> snapshot() const;
    // Copy of one cached object (same key), without copying the whole cache.
    std::optional<T> get(const std::string& key) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

extern template class Informer<Pod>;
extern template class Informer<Namespace>;

}  // namespace kmesh::kube
