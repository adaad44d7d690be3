#include "agent/src/enrolment/executor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <set>

#include "common/cgroup.hpp"
#include "common/enrolment.hpp"

namespace kmesh::enrolment {

namespace fs = std::filesystem;

namespace {

// find_pod_cgroup needs a uid that cannot walk the tree.
bool plausible_uid(const std::string& uid) {
    return !uid.empty() && uid.size() <= 128 && std::all_of(uid.begin(), uid.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
    });
}

Status to_status(const PodLinkError& e) {
    const Errc code = e.code() == kErrTryAgainLater ? Errc::kUnavailable
                      : e.code() == kErrIo          ? Errc::kIo
                                                    : Errc::kInternal;
    return Status(code, e.details().empty() ? e.what() : std::string(e.what()) + " (" + e.details() + ")");
}

}  // namespace

Executor::Executor(Kernel& kernel, kube::Api& api, ExecutorOptions options, spdlog::logger& log)
    : kernel_(kernel), api_(api), options_(std::move(options)), log_(log) {}

std::vector<Record> Executor::scan_records() {
    std::vector<Record> out;
    std::error_code ec;
    for (fs::directory_iterator it(options_.layout.pods_dir(), ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        Record r;
        r.name = name;
        if (name.starts_with(kSharedPrefix))
            r.kind = RecordKind::kShared;
        else if (name.starts_with(kAgentPodPrefix))
            r.kind = RecordKind::kAgent;
        else if (!name.empty() && std::isalnum(static_cast<unsigned char>(name[0])))
            r.kind = RecordKind::kContainer;
        else
            continue;
        const RecordLinks links = read_record_links(kernel_, it->path());
        r.live_cgroups = links.live_cgroups;
        r.all_detached = links.all_detached();
        out.push_back(std::move(r));
    }
    return out;
}

PassResult Executor::pass(const std::vector<kube::Pod>& pods,
                          const std::map<std::string, kube::Namespace>& namespaces) {
    PassResult result;
    Inputs in;
    in.namespaces = namespaces;
    in.agent_namespace = options_.agent_namespace;
    in.exclude_namespaces = options_.exclude_namespaces;

    fs::path root = options_.cgroup_root;
    if (root.empty()) {
        auto mount = find_cgroup2_mount();
        if (!mount) {
            result.errors.emplace_back(Errc::kNotFound, "no cgroup v2 mount in /proc/self/mountinfo");
            return result;
        }
        root = *mount;
    }
    for (const auto& pod : pods) {
        PodView v{pod};
        if (plausible_uid(pod.meta.uid)) {
            PodCgroupLookup lookup = find_pod_cgroup(root, pod.meta.uid);
            if (lookup.path) {
                std::uint64_t id = 0;
                int fd = kernel_.open_cgroup(lookup.path->string(), &id);
                if (fd >= 0) {
                    kernel_.close(fd);
                    v.cgroup_id = id;
                    v.cgroup_path = lookup.path->string();
                }
            }
        }
        in.pods.push_back(std::move(v));
    }

    const std::string pods_dir = options_.layout.pods_dir();
    std::error_code ec;
    fs::create_directories(pods_dir, ec);
    if (ec) {
        result.errors.emplace_back(Errc::kIo, fmt::format("cannot create {}: {}", pods_dir, ec.message()));
        return result;
    }
    std::set<std::string> failed_pods;  // uids whose attach failed: not annotated
    std::vector<PinnedProg> progs;      // opened on the first attach
    try {
        PodsLock lock(pods_dir);
        in.records = scan_records();
        result.plan = plan(in);
        for (const auto& a : result.plan.actions) {
            if (a.kind != Action::kRemoveRecord && a.kind != Action::kAttach) continue;
            if (Status st = apply(a, progs); !st) {
                if (a.kind == Action::kAttach) failed_pods.insert(a.pod_uid);
                result.errors.push_back(st);
            }
        }
        // Records attached by an older agent with fewer cgroup programs, or without their
        // sk_lookup link (older kmesh, or no process yet).
        attach_missing_cgroup_links(kernel_, options_.layout, root, log_);
        attach_missing_netns_links(kernel_, options_.layout, root, log_, options_.proc_root);
    } catch (const PodLinkError& e) {  // the lock itself
        result.errors.push_back(to_status(e));
        return result;
    }
    // API calls outside the lock: kmesh-cni ADDs must not wait for the API server.
    for (const auto& a : result.plan.actions) {
        if (a.kind != Action::kAnnotate && a.kind != Action::kUnannotate) continue;
        if (failed_pods.count(a.pod_uid)) continue;
        if (Status st = apply(a, progs); !st) result.errors.push_back(st);
    }
    return result;
}

Status Executor::apply(const Action& a, std::vector<PinnedProg>& progs) {
    const std::string pod = a.pod_namespace + "/" + a.pod_name;
    switch (a.kind) {
        case Action::kRemoveRecord: {
            const fs::path dir = fs::path(options_.layout.pods_dir()) / a.record;
            try {
                remove_tree(dir);
            } catch (const PodLinkError& e) {
                return to_status(e);
            }
            if (a.pod_name.empty())
                log_.info("enrolment: removed {}: {}", dir.string(), a.reason);
            else
                log_.info("enrolment: pod {}: removed {}: {}", pod, dir.string(), a.reason);
            return Status::ok();
        }
        case Action::kAttach: {
            try {
                if (progs.empty()) progs = open_pod_progs(kernel_, options_.layout, kErrTryAgainLater);
                std::uint64_t id = 0;
                KernelFd cg = open_pod_cgroup(a.cgroup_path, kernel_, kErrAttach, &id, log_);
                if (id != a.cgroup_id)  // recreated between the lookup and now: plan again
                    return Status(Errc::kUnavailable,
                                  fmt::format("pod {}: cgroup {} changed", pod, a.cgroup_path));
                // L4 authorization needs the pod's netns, found from a process of the pod; without
                // one the pod is enrolled without it and a later pass attaches it.
                std::optional<PodNetns> netns =
                    find_pod_netns(kernel_, a.cgroup_path, log_, options_.proc_root);
                attach_locked(kernel_, options_.layout, progs, cg.get(), id, /*shared=*/false, a.record, "",
                              log_, netns ? &*netns : nullptr);
            } catch (const PodLinkError& e) {
                return Status(to_status(e).code(),
                              fmt::format("pod {}: cannot enrol: {}", pod, to_status(e).message()));
            }
            log_.info("enrolment: pod {} enrolled ({}), links in {}", pod, a.reason,
                      options_.layout.pod_dir(a.record));
            return Status::ok();
        }
        case Action::kAnnotate:
        case Action::kUnannotate: {
            kube::AnnotationPatch patch;
            if (a.kind == Action::kAnnotate)
                patch[kRedirectionAnnotation] = std::string(kRedirectionEnabled);
            else
                patch[kRedirectionAnnotation] = std::nullopt;
            Status st = api_.patch_pod_annotations(a.pod_namespace, a.pod_name, patch);
            if (!st) {
                // A pod deleted meanwhile needs no annotation.
                if (st.code() == Errc::kNotFound) return Status::ok();
                return Status(st.code(), fmt::format("pod {}: cannot {} {}: {}", pod,
                                                     a.kind == Action::kAnnotate ? "set" : "remove",
                                                     kRedirectionAnnotation, st.message()));
            }
            return Status::ok();
        }
    }
    return Status(Errc::kInternal, "unknown action");
}

}  // namespace kmesh::enrolment
