#include "agent/src/sources/xds/source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

#include "agent/src/sources/xds/convert.hpp"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::Resource;

void Source::decode_address(Resource& r, bool take, istio::workload::Address& a, Decoded* d) {
    if (take) {
        d->name.swap(*r.mutable_name());
        d->version.swap(*r.mutable_version());
    } else {
        d->name = r.name();
        d->version = r.version();
    }
    d->err.clear();
    if (r.resource().type_url() != kAddressType) {
        d->err = fmt::format("carries {}, not {}", r.resource().type_url(), kAddressType);
        return;
    }
    // One message for every resource of a response (per thread): a parse reuses its
    // sub-messages and the strings not moved out below (a full push decodes 110k of them).
    if (!a.ParseFromString(r.resource().value())) {
        d->err = "cannot be decoded as istio.workload.Address";
        return;
    }
    if (!a.has_workload() && !a.has_service()) {
        d->err = "is neither a workload nor a service";
        return;
    }
    // Converted (and validated) first, so that a resource without a name is refused for that.
    // The workload's strings move into the model's form (`a` is not read again but for the
    // service's name).
    d->is_workload = a.has_workload();
    if (auto e = d->is_workload ? convert_workload(std::move(*a.mutable_workload()), &d->workload)
                                : convert_service(a.service(), &d->service);
        !e.empty()) {
        d->err = std::move(e);
        return;
    }
    std::string name = d->is_workload ? d->workload.uid : resource_name(a);
    if (name != d->name) d->err = fmt::format("is named '{}' but describes '{}'", d->name, name);
}

std::string Source::apply_decoded(Decoded& d) {
    if (!d.err.empty()) return d.err;
    const std::string& name = d.name;
    if (auto e = mesh_.check_name(name); !e.empty()) return e;
    // The model itself says what a name is; a name that changes kind drops its old self.
    if (d.is_workload) {
        if (mesh_.model().services.count(name)) mesh_.remove_service(name);
        mesh_.upsert_workload(std::move(d.workload));
    } else {
        if (mesh_.model().workloads.count(name)) mesh_.remove_workload(name);
        mesh_.upsert_service(d.service);
    }
    return {};
}

std::string Source::apply_address(const Resource& r) {
    Decoded d;
    decode_address(const_cast<Resource&>(r), false, address_, &d);  // not taken: `r` is read only
    return apply_decoded(d);
}

std::string Source::apply_authorization(const Resource& r) {
    if (r.resource().type_url() != kAuthorizationType)
        return fmt::format("carries {}, not {}", r.resource().type_url(), kAuthorizationType);
    istio::security::Authorization p;
    if (!p.ParseFromString(r.resource().value())) return "cannot be decoded as istio.security.Authorization";
    AuthzPolicy policy;
    if (auto e = convert_authorization(p, &policy); !e.empty()) return e;
    if (resource_name(p) != r.name())
        return fmt::format("is named '{}' but describes '{}'", r.name(), resource_name(p));
    mesh_.upsert_policy(policy);
    return {};
}

void Source::remove(const std::string& type_url, const std::string& name) {
    versions_[type_url].erase(name_hash(name));
    rejected_[type_url].erase(name);
    if (type_url == kAuthorizationType) {
        mesh_.remove_policy(name);
        return;
    }
    mesh_.unpin(name);  // what a previous agent wrote for it goes now
    if (mesh_.model().workloads.count(name))
        mesh_.remove_workload(name);
    else
        mesh_.remove_service(name);
}

std::vector<std::string> Source::on_response(const DeltaDiscoveryResponse& resp) {
    return handle(resp, nullptr);
}

std::vector<std::string> Source::consume_response(DeltaDiscoveryResponse& resp) {
    return handle(resp, &resp);
}

namespace {
// Gives a string's heap block back (clear() keeps the capacity).
void release(std::string* s) { std::string().swap(*s); }
}  // namespace

std::vector<std::string> Source::handle(const DeltaDiscoveryResponse& resp,
                                        DeltaDiscoveryResponse* consumable) {
    auto t0 = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    std::vector<std::string> rejected;
    const std::string& type = resp.type_url();
    if (type != kAddressType && type != kAuthorizationType) {
        rejected.push_back(fmt::format("type {} was not subscribed", type));
        return rejected;
    }
    const int total = resp.resources_size();
    if (total > 1000) versions_[type].reserve(versions_[type].size() + static_cast<size_t>(total));
    constexpr int kChunk = kConsumeChunk;
    int i = 0;  // index in resp.resources() of the next resource (earlier ones may be gone)
    for (int n = 0; n < total; n++, i++) {
        if (consumable && i == kChunk) {
            consumable->mutable_resources()->DeleteSubrange(0, kChunk);
            i = 0;
        }
        const Resource& r = resp.resources(i);
        // Freed at the end of this iteration, whatever path it takes: the model's copy of the
        // resource grows while the response shrinks, instead of both peaking together.
        struct Release {
            Resource* r;
            ~Release() {
                if (!r) return;
                release(r->mutable_resource()->mutable_value());
                release(r->mutable_resource()->mutable_type_url());
                release(r->mutable_name());
                release(r->mutable_version());
            }
        } done{consumable ? consumable->mutable_resources(i) : nullptr};
        std::string err = type == kAddressType ? apply_address(r) : apply_authorization(r);
        settle(type, r.name(), r.version(), err, &rejected);
    }
    NameList removed;
    for (const auto& name : resp.removed_resources()) removed.push_back(name);
    bool programmed = finish(type, removed);
    log_handled(type, total, removed.size(), rejected.size(), resp.nonce(), programmed, t0);
    return rejected;
}

namespace {

// Decoded resources on their way from the decoding thread to the applying one, in order, in
// batches (one lock round per batch, not per resource). At most kDepth batches wait, so that the
// decoder cannot run far ahead of the model and hold a second copy of the response converted.
class Pipe {
  public:
    static constexpr size_t kBatch = 512, kDepth = 4;
    using Batch = std::vector<Source::Decoded>;
    // Decoder: false once the consumer has stopped.
    bool push(Batch&& b) {
        std::unique_lock lock(mu_);
        room_.wait(lock, [&] { return q_.size() < kDepth || stopped_; });
        if (stopped_) return false;
        q_.push_back(std::move(b));
        ready_.notify_one();
        return true;
    }
    void close() {
        std::lock_guard lock(mu_);
        closed_ = true;
        ready_.notify_one();
    }
    // Consumer: false once the decoder closed and everything was taken.
    bool pop(Batch* b) {
        std::unique_lock lock(mu_);
        ready_.wait(lock, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return false;
        *b = std::move(q_.front());
        q_.pop_front();
        room_.notify_one();
        return true;
    }
    void stop() {
        std::lock_guard lock(mu_);
        stopped_ = true;
        room_.notify_one();
    }

  private:
    std::mutex mu_;
    std::condition_variable ready_, room_;
    std::deque<Batch> q_;
    bool closed_ = false, stopped_ = false;
};

}  // namespace

std::vector<std::string> Source::consume_wire(WireResponse& w) {
    auto t0 = std::chrono::steady_clock::now();
    std::lock_guard lock(mu_);
    std::vector<std::string> rejected;
    const std::string type = w.type_url;
    if (type != kAddressType && type != kAuthorizationType) {
        rejected.push_back(fmt::format("type {} was not subscribed", type));
        return rejected;
    }
    const int total = w.resources;
    if (total > 1000) versions_[type].reserve(versions_[type].size() + static_cast<size_t>(total));
    // A Resource entry whose bytes do not decode: gRPC would have refused the whole response;
    // here it is refused alone, under whatever name could be read (none: nothing is pinned).
    auto undecodable = [](Decoded* d) {
        d->name.clear();
        d->version.clear();
        d->err = "cannot be decoded as an envoy.service.discovery.v3.Resource";
    };
    if (type == kAuthorizationType) {
        ResourceWalker walk(w, true);
        bool ok = true;
        while (Resource* r = walk.next(&ok)) {
            if (!ok) {
                Decoded d;
                undecodable(&d);
                settle(type, d.name, d.version, d.err, &rejected);
                continue;
            }
            settle(type, r->name(), r->version(), apply_authorization(*r), &rejected);
        }
    } else if (total < kPipelineMin) {
        ResourceWalker walk(w, true);
        bool ok = true;
        Decoded d;
        while (Resource* r = walk.next(&ok)) {
            ok ? decode_address(*r, true, address_, &d) : undecodable(&d);
            std::string err = apply_decoded(d);
            settle(type, d.name, d.version, err, &rejected);
        }
    } else {
        // The decoder thread touches only `w` (which this thread leaves alone until the join),
        // its own Address and walker, and the intern pools, which lock (model/interned.hpp,
        // model.cpp). Decoded resources pass through the Pipe's mutex, which orders their
        // writes before this thread's reads. The model, versions and rejections stay on this
        // thread, under mu_, in the response's order: the result is on_response's.
        // (Converting on this thread instead, so that only one thread interns, measured slower
        // in the one run it had: docs/benchmarks.md, "Push time, fourth pass".)
        Pipe pipe;
        std::thread decoder([&w, &pipe, &undecodable] {
            istio::workload::Address scratch;
            ResourceWalker walk(w, true);
            Pipe::Batch batch;
            batch.reserve(Pipe::kBatch);
            bool ok = true;
            while (Resource* r = walk.next(&ok)) {
                Decoded& d = batch.emplace_back();
                ok ? decode_address(*r, true, scratch, &d) : undecodable(&d);
                if (batch.size() == Pipe::kBatch) {
                    if (!pipe.push(std::move(batch))) return;
                    batch = Pipe::Batch();
                    batch.reserve(Pipe::kBatch);
                }
            }
            if (!batch.empty()) pipe.push(std::move(batch));
            pipe.close();
        });
        // Joined on every way out (an exception from the model included): the decoder is told
        // to stop pushing, and it never waits on anything else.
        struct Join {
            Pipe& pipe;
            std::thread& t;
            ~Join() {
                pipe.stop();
                t.join();
            }
        } join{pipe, decoder};
        Pipe::Batch batch;
        while (pipe.pop(&batch)) {
            for (Decoded& d : batch) {
                std::string err = apply_decoded(d);
                settle(type, d.name, d.version, err, &rejected);
            }
            batch.clear();
        }
    }
    // The resources are applied and the removed names were copied out by scan(): what is left of
    // the encoded response (after a mass removal, every name again, ~4 MB) goes before the model
    // starts shrinking, not after the maps are written.
    std::vector<grpc::Slice>().swap(w.chunks);
    bool programmed = finish(type, w.removed);
    log_handled(type, total, w.removed.size(), rejected.size(), w.nonce, programmed, t0);
    return rejected;
}

void Source::settle(const std::string& type, const std::string& name, const std::string& version,
                    const std::string& err, std::vector<std::string>* rejected) {
    // A rejected resource keeps its last good state (or stays absent) and its old version, so
    // that a reconnect asks for it again.
    if (!err.empty()) {
        rejected->push_back(
            fmt::format("{}: {}", name.empty() ? "(resource with an empty name)" : name, err));
        if (!name.empty()) reject(type, name, version);
        return;
    }
    versions_[type].set(name_hash(name), version);
    auto& rejected_names = rejected_[type];
    if (!rejected_names.empty()) rejected_names.erase(name);
    if (type == kAddressType) mesh_.unpin(name);
}

bool Source::finish(const std::string& type, const NameList& removed) {
    std::string name;  // one buffer for every name (the model's calls take a std::string)
    for (size_t i = 0; i < removed.size(); i++) {
        name.assign(removed[i]);
        remove(type, name);
    }
    // Until istiod's first Address response, the model is empty and the maps hold what a previous
    // agent wrote: writing now would wipe them.
    if (type == kAddressType) addresses_received_ = true;
    if (type == kAuthorizationType) policies_received_ = true;
    return addresses_received_ && sync_();
}

void Source::log_handled(const std::string& type, int total, size_t removed, size_t rejected,
                         const std::string& nonce, bool programmed,
                         std::chrono::steady_clock::time_point t0) {
    auto handled_us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
    spdlog::debug("xds: {} response: {} resources, {} removed, {} rejected; handled in {} us", type, total,
                  removed, rejected, handled_us);
    // Wall-clock time (epoch µs), so that a benchmark can put it next to the server's send time
    // of the same nonce: server send -> every map programmed, as istiod would see it.
    if (programmed)
        spdlog::debug("xds: maps programmed for nonce {} at {} us (epoch)", nonce,
                      std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
}

// A rejected resource keeps its last good state. When the model holds none (this agent started
// after it was last good), that state is whatever the maps hold for its name: pinned, so that the
// first sync after a restart does not delete it. A name whose hash belongs to another resource
// (check_name refused it) is not pinned: the hash is not its own.
void Source::reject(const std::string& type_url, const std::string& name, const std::string& version) {
    bool held = type_url == kAuthorizationType
                    ? mesh_.model().policies.count(name) > 0
                    : mesh_.model().services.count(name) || mesh_.model().workloads.count(name);
    if (held) return;  // its version stays the last good one's
    rejected_[type_url][name] = version;
    if (type_url == kAddressType && mesh_.check_name(name).empty()) mesh_.pin(name);
}

std::map<std::string, std::string> Source::versions(const std::string& type_url) {
    std::lock_guard lock(mu_);
    const auto& held = versions_[type_url];
    std::map<std::string, std::string> out;
    auto add = [&](const std::string& name) {
        if (auto v = held.get(name_hash(name))) out.emplace(name, std::move(*v));
    };
    if (type_url == kAuthorizationType) {
        for (const auto& [name, p] : mesh_.model().policies) add(name);
    } else {
        for (const auto& [key, s] : mesh_.model().services) add(key);
        for (const auto& [uid, w] : mesh_.model().workloads) add(uid);
    }
    // Rejected names the model does not hold are named too, with the rejected version: istiod
    // then sends them again only when they change, and says so when they are removed (which
    // releases what the maps kept for them).
    for (const auto& [name, version] : rejected_[type_url]) out.emplace(name, version);
    return out;
}

void Source::on_connection(bool connected) {
    std::lock_guard lock(mu_);
    if (connected)
        spdlog::info("xds: connected; holding {} addresses and {} policies", resources(kAddressType),
                     resources(kAuthorizationType));
    else
        spdlog::warn("xds: disconnected; the data plane keeps serving the last state");
}

size_t Source::resources(const std::string& type_url) const {
    auto it = versions_.find(type_url);
    return it == versions_.end() ? 0 : it->second.size();
}

}  // namespace kmesh::xds
