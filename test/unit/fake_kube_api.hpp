// An in-memory kube::Api: pods and namespaces by name, every PATCH recorded, failures injectable.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/kube/api.hpp"

namespace kmesh::test {

class FakeKubeApi : public kube::Api {
  public:
    std::map<std::string, kube::Pod> pods;  // "<ns>/<name>"
    std::map<std::string, kube::Namespace> namespaces;
    std::optional<Status> fail_get;    // every GET fails with this
    std::optional<Status> fail_patch;  // every PATCH fails with this
    int gets = 0;
    int namespace_gets = 0;
    std::optional<Status> fail_namespace_get;                            // only namespace GETs fail with this
    std::vector<std::pair<std::string, kube::AnnotationPatch>> patches;  // "<ns>/<name>", patch

    kube::Pod& add_pod(const std::string& ns, const std::string& name, const std::string& uid,
                       std::map<std::string, std::string> labels = {}, const std::string& node = "node-1") {
        kube::Pod p;
        p.meta.name = name;
        p.meta.namespace_ = ns;
        p.meta.uid = uid;
        p.meta.labels = std::move(labels);
        p.node_name = node;
        p.containers = {"app"};
        p.phase = "Running";
        return pods[ns + "/" + name] = p;
    }
    kube::Namespace& add_namespace(const std::string& name, std::map<std::string, std::string> labels = {}) {
        kube::Namespace n;
        n.meta.name = name;
        n.meta.labels = std::move(labels);
        return namespaces[name] = n;
    }

    Result<kube::Pod> get_pod(const std::string& ns, const std::string& name) override {
        ++gets;
        if (fail_get) return *fail_get;
        auto it = pods.find(ns + "/" + name);
        if (it == pods.end()) return Status(Errc::kNotFound, "pods \"" + name + "\" not found");
        return it->second;
    }
    Result<kube::Namespace> get_namespace(const std::string& name) override {
        ++gets;
        ++namespace_gets;
        if (fail_get) return *fail_get;
        if (fail_namespace_get) return *fail_namespace_get;
        auto it = namespaces.find(name);
        if (it == namespaces.end()) return Status(Errc::kNotFound, "namespaces \"" + name + "\" not found");
        return it->second;
    }
    Status patch_pod_annotations(const std::string& ns, const std::string& name,
                                 const kube::AnnotationPatch& patch) override {
        patches.emplace_back(ns + "/" + name, patch);
        if (fail_patch) return *fail_patch;
        auto it = pods.find(ns + "/" + name);
        if (it == pods.end()) return Status(Errc::kNotFound, "pods \"" + name + "\" not found");
        for (const auto& [k, v] : patch) {
            if (v)
                it->second.meta.annotations[k] = *v;
            else
                it->second.meta.annotations.erase(k);
        }
        return Status::ok();
    }
    Result<kube::List<kube::Pod>> list_pods(const kube::ListOptions&) override {
        kube::List<kube::Pod> l;
        for (const auto& [k, p] : pods) l.items.push_back(p);
        return l;
    }
    Result<kube::List<kube::Namespace>> list_namespaces(const kube::ListOptions&) override {
        kube::List<kube::Namespace> l;
        for (const auto& [k, n] : namespaces) l.items.push_back(n);
        return l;
    }
    Status watch_pods(const kube::ListOptions&, const std::string&, int, const kube::WatchHandler<kube::Pod>&,
                      const std::atomic<bool>&) override {
        return Status(Errc::kUnavailable, "fake: no watch");
    }
    Status watch_namespaces(const kube::ListOptions&, const std::string&, int,
                            const kube::WatchHandler<kube::Namespace>&, const std::atomic<bool>&) override {
        return Status(Errc::kUnavailable, "fake: no watch");
    }
};

}  // namespace kmesh::test
