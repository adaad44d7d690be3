#include "agent/src/sources/xds/source.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>

#include "agent/src/sources/xds/convert.hpp"
#include "istio/workload/workload.pb.h"

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::Resource;

std::string Source::parse_address(const Resource& r, istio::workload::Address& a) {
    if (r.resource().type_url() != kAddressType)
        return fmt::format("carries {}, not {}", r.resource().type_url(), kAddressType);
    if (!a.ParseFromString(r.resource().value())) return "cannot be decoded as istio.workload.Address";
    return {};
}

std::string Source::apply_parsed(const std::string& rname, istio::workload::Address& a) {
    if (!a.has_workload() && !a.has_service()) return "is neither a workload nor a service";
    // Converted (and validated) first, so that a resource without a name is refused for that.
    Workload w;
    Service s;
    // The workload's strings move into the model's form (`a` is not read again but for the
    // service's name).
    if (auto e = a.has_workload() ? convert_workload(std::move(*a.mutable_workload()), &w)
                                  : convert_service(a.service(), &s);
        !e.empty())
        return e;
    std::string name = a.has_workload() ? w.uid : resource_name(a);
    if (name != rname) return fmt::format("is named '{}' but describes '{}'", rname, name);
    if (auto e = mesh_.check_name(name); !e.empty()) return e;
    // The model itself says what a name is; a name that changes kind drops its old self.
    if (a.has_workload()) {
        if (mesh_.model().services.count(name)) mesh_.remove_service(name);
        mesh_.upsert_workload(std::move(w));
    } else {
        if (mesh_.model().workloads.count(name)) mesh_.remove_workload(name);
        mesh_.upsert_service(s);
    }
    return {};
}

std::string Source::apply_address(const Resource& r) {
    // One message for every resource of a response: a parse reuses its sub-messages and the
    // strings not moved out (a full push decodes 110k of them).
    if (auto e = parse_address(r, address_); !e.empty()) return e;
    return apply_parsed(r.name(), address_);
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
    std::vector<std::string> removed(resp.removed_resources().begin(), resp.removed_resources().end());
    bool programmed = finish(type, removed);
    log_handled(type, total, removed.size(), rejected.size(), resp.nonce(), programmed, t0);
    return rejected;
}

namespace {

constexpr const char* kNotAResource = "cannot be decoded as an envoy.service.discovery.v3.Resource";

// Parsed resources on their way from the decoding thread to the applying one, in order, in
// batches (one lock round per batch, not per resource). The batches go round: kBatches of them,
// made once per response, filled by the decoder, emptied by the applier, handed back; so the
// decoder never runs more than kBatches × kBatch resources ahead, and their Address messages are
// reused (~2k of them, not one per resource).
class Pipe {
  public:
    static constexpr size_t kBatch = 512, kBatches = 6;
    struct Batch {
        std::vector<Source::Parsed> items{kBatch};
        size_t size = 0;
    };
    Pipe() {
        for (auto& b : batches_) free_.push_back(&b);
    }
    // Decoder: an empty batch to fill; null once the applier has stopped.
    Batch* take_free() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !free_.empty() || stopped_; });
        if (stopped_) return nullptr;
        Batch* b = free_.front();
        free_.pop_front();
        return b;
    }
    void push_full(Batch* b) {
        std::lock_guard lock(mu_);
        full_.push_back(b);
        cv_.notify_all();
    }
    void close() {
        std::lock_guard lock(mu_);
        closed_ = true;
        cv_.notify_all();
    }
    // Applier: the next filled batch; null once the decoder closed and all was taken.
    Batch* take_full() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !full_.empty() || closed_; });
        if (full_.empty()) return nullptr;
        Batch* b = full_.front();
        full_.pop_front();
        return b;
    }
    void give_back(Batch* b) {
        std::lock_guard lock(mu_);
        b->size = 0;
        free_.push_back(b);
        cv_.notify_all();
    }
    void stop() {
        std::lock_guard lock(mu_);
        stopped_ = true;
        cv_.notify_all();
    }

  private:
    std::array<Batch, kBatches> batches_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Batch*> free_, full_;
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
    // here it is refused alone, under no name (nothing is pinned for it).
    if (type == kAuthorizationType || total < kPipelineMin) {
        ResourceWalker walk(w, true);
        bool ok = true;
        while (Resource* r = walk.next(&ok)) {
            if (!ok) {
                settle(type, {}, {}, kNotAResource, &rejected);
                continue;
            }
            std::string err = type == kAddressType ? apply_address(*r) : apply_authorization(*r);
            settle(type, r->name(), r->version(), err, &rejected);
        }
    } else {
        // The decoding thread walks the bytes and parses each Resource and its Address, which
        // is what gRPC did on this thread before the response was handed over; this thread
        // converts and applies them as they come. Conversion stays here: it interns strings in
        // process-wide pools (model/interned.hpp, Placement::intern), whose locks the two
        // threads would otherwise contend for on every workload.
        //
        // Data: the decoder touches only `w` (this thread leaves it alone until the join), its
        // walker, and the batches it holds between take_free and push_full; this thread only
        // the batches between take_full and give_back. The Pipe's mutex orders each hand-over.
        // The model, versions and rejections stay on this thread, under mu_, in the response's
        // order: the result is on_response's.
        Pipe pipe;
        std::thread decoder([&w, &pipe] {
            ResourceWalker walk(w, true);
            bool ok = true;
            Pipe::Batch* b = nullptr;
            while (Resource* r = walk.next(&ok)) {
                if (!b && !(b = pipe.take_free())) return;
                Parsed& p = b->items[b->size++];
                if (ok) {
                    p.name.swap(*r->mutable_name());
                    p.version.swap(*r->mutable_version());
                    p.err = parse_address(*r, p.address);
                } else {
                    p.name.clear();
                    p.version.clear();
                    p.err = kNotAResource;
                }
                if (b->size == Pipe::kBatch) {
                    pipe.push_full(b);
                    b = nullptr;
                }
            }
            if (b) pipe.push_full(b);
            pipe.close();
        });
        // Joined on every way out (an exception from the model included): the decoder is told
        // to stop, and it waits on nothing else.
        struct Join {
            Pipe& pipe;
            std::thread& t;
            ~Join() {
                pipe.stop();
                t.join();
            }
        } join{pipe, decoder};
        while (Pipe::Batch* b = pipe.take_full()) {
            for (size_t i = 0; i < b->size; i++) {
                Parsed& p = b->items[i];
                std::string err = p.err.empty() ? apply_parsed(p.name, p.address) : p.err;
                settle(type, p.name, p.version, err, &rejected);
            }
            pipe.give_back(b);
        }
    }
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

bool Source::finish(const std::string& type, const std::vector<std::string>& removed) {
    for (const auto& name : removed) remove(type, name);
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
