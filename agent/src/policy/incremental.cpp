#include "agent/src/policy/incremental.hpp"

#include <algorithm>

#include "agent/src/dataplane/dataplane_state.hpp"  // name_hash: the model's name of a uid
#include "agent/src/policy/match.hpp"

namespace kmesh::policy {

uint32_t IncrementalAuthz::id_of(const IpAddr& a) const {
    // As compile_authz: an address has an identity when every workload claiming it has the same
    // known identity (and is not host-network, whose claims carry none).
    auto it = claims_.lower_bound({a, nullptr});
    if (it == claims_.end() || it->first.first != a) return 0;
    const SourceIdentity* id = it->first.second;
    if (++it != claims_.end() && it->first.first == a) return 0;  // claimed by two identities
    return id ? out_.identities.at(*id) : 0;
}

void IncrementalAuthz::Entry::assign(std::span<const IpAddr> addrs) {
    count = static_cast<uint32_t>(addrs.size());
    first = count ? addrs[0] : IpAddr{};
    rest.reset();
    if (count > 1) {
        rest = std::make_unique<IpAddr[]>(count - 1);
        std::copy(addrs.begin() + 1, addrs.end(), rest.get());
    }
}

void IncrementalAuthz::unindex(uint64_t hash, std::set<SourceIdentity>& touched_idents) {
    auto it = index_.find(hash);
    if (it == index_.end()) return;
    const Entry& e = it->second;
    const SourceIdentity* claim = e.host ? nullptr : e.ident;
    e.each([&](const IpAddr& a) {
        auto c = claims_.find({a, claim});
        if (--c->second == 0) claims_.erase(c);
    });
    if (e.ident) {
        touched_idents.insert(*e.ident);
        auto r = refs_.find(*e.ident);
        if (--r->second == 0) refs_.erase(r);
    }
    index_.erase(it);
}

void IncrementalAuthz::reindex(const std::string& uid, const Workload* now,
                               std::set<SourceIdentity>& touched_idents) {
    uint64_t hash = name_hash(uid);
    unindex(hash, touched_idents);
    local_.erase(uid);
    if (!now) return;
    Entry e;
    SourceIdentity id = identity_of(*now);
    if (id.known()) {
        touched_idents.insert(id);
        auto r = refs_.try_emplace(std::move(id), 0).first;
        r->second++;
        e.ident = &r->first;
    }
    e.host = now->network_mode == NetworkMode::kHostNetwork;
    e.assign(now->addresses);
    const SourceIdentity* claim = e.host ? nullptr : e.ident;
    for (const auto& a : now->addresses) claims_[{a, claim}]++;
    if (is_local(*now, node_)) local_.insert(uid);
    index_.emplace(hash, std::move(e));
}

bool IncrementalAuthz::number_identities(const std::set<SourceIdentity>& touched,
                                         const IdentityIds& previous) {
    // compile_authz's numbering: a present identity keeps its id; new ones (in identity order) take
    // the id they had in the last publish, else ids from `next` up, never handed out before.
    bool changed = false;
    uint32_t next = std::max({out_.next_identity, previous.next, 1u});
    for (const auto& id : touched) {
        bool present = refs_.count(id) > 0;
        auto have = out_.identities.find(id);
        if (!present && have != out_.identities.end()) {
            out_.identities.erase(have);
            changed = true;
        } else if (present && have == out_.identities.end()) {
            auto p = previous.ids.find(id);
            out_.identities[id] = p != previous.ids.end() ? p->second : next++;
            changed = true;
        }
    }
    out_.next_identity = next;
    return changed;
}

void IncrementalAuthz::compile_local_tables(const Model& model) {
    std::vector<const Workload*> local;
    local.reserve(local_.size());
    for (const auto& uid : local_) local.push_back(&model.workloads.at(uid));
    compile_tables(model, local, out_);
}

Status IncrementalAuthz::rebuild(const Model& model, AuthzWriter& writer) {
    IdentityIds previous = writer.identities();
    decltype(index_)().swap(index_);  // clear() would keep the buckets of the largest mesh seen
    claims_.clear();
    refs_.clear();
    local_.clear();
    out_ = {};
    if (!previous.addr_ids.empty()) {
        // After a restart, identities take the ids the kernel's addresses carry: compile_authz
        // knows how (the index then numbers nothing new).
        auto c = compile_authz(model, node_, previous, sizes_);
        if (!c) return c.status();
        out_.identities = std::move(c->identities);
        out_.next_identity = c->next_identity;
    } else {
        out_.next_identity = previous.next;
        for (const auto& [id, n] : previous.ids) out_.next_identity = std::max(out_.next_identity, n + 1);
    }
    std::set<SourceIdentity> touched;
    index_.reserve(model.workloads.size());
    for (const auto& [uid, w] : model.workloads) reindex(uid, &w, touched);
    number_identities(touched, previous);
    for (const auto& [key, p] : model.policies) out_.policy_keys.push_back(key);
    for (auto it = claims_.begin(); it != claims_.end();) {
        const IpAddr& a = it->first.first;
        if (uint32_t id = id_of(a)) out_.addr_identity.emplace_hint(out_.addr_identity.end(), a, id);
        while (it != claims_.end() && it->first.first == a) ++it;
    }
    ident_count_ = out_.addr_identity.size();
    compile_local_tables(model);
    last_ = {true,
             true,
             model.workloads.size(),
             out_.addr_identity.size(),
             out_.tables.rows.size(),
             out_.tables.sets.size()};
    Status st = check_limits(out_, ident_count_, sizes_);
    if (st) st = writer.publish(out_);
    out_.addr_identity.clear();  // the index holds it; the writer mirrors what the kernel has
    return st;
}

Status IncrementalAuthz::sync(const Model& model, const ModelChanges& changes, bool policies_changed,
                              AuthzWriter& writer) {
    if (!valid_ || changes.all || !writer.can_take_hint()) {
        Status st = rebuild(model, writer);
        valid_ = st.is_ok();
        return st;
    }
    IdentityIds previous;  // the writer's ids are this compile's (a completed publish), but its next
    previous.next = writer.next_identity();
    // Addresses of the touched workloads, before and after: only their identity can change.
    std::vector<IpAddr> addrs;
    for (const auto& uid : changes.workloads) {
        if (auto it = index_.find(name_hash(uid)); it != index_.end())
            it->second.each([&](const IpAddr& a) { addrs.push_back(a); });
        if (auto w = model.workloads.find(uid); w != model.workloads.end())
            addrs.insert(addrs.end(), w->second.addresses.begin(), w->second.addresses.end());
    }
    std::sort(addrs.begin(), addrs.end());
    addrs.erase(std::unique(addrs.begin(), addrs.end()), addrs.end());
    for (const auto& a : addrs)
        if (id_of(a)) ident_count_--;
    bool local_changed = false;
    std::set<SourceIdentity> touched;
    // Removed names first: a present name may have taken a removed one's hash in this batch.
    for (int present = 0; present < 2; present++)
        for (const auto& uid : changes.workloads) {
            auto w = model.workloads.find(uid);
            if ((w != model.workloads.end()) != (present == 1)) continue;
            bool was_local = local_.count(uid) > 0;
            reindex(uid, w == model.workloads.end() ? nullptr : &w->second, touched);
            if (was_local || local_.count(uid)) local_changed = true;
        }
    bool identities_changed = number_identities(touched, previous);
    std::vector<std::pair<IpAddr, uint32_t>> idents;
    idents.reserve(addrs.size());
    for (const auto& a : addrs) {
        uint32_t id = id_of(a);
        if (id) ident_count_++;
        idents.emplace_back(a, id);
    }
    if (policies_changed) {
        out_.policy_keys.clear();
        for (const auto& [key, p] : model.policies) out_.policy_keys.push_back(key);
    }
    // The identity universe decides the identity sets of policies with identity fields.
    bool tables = policies_changed || local_changed || (identities_changed && !model.policies.empty());
    if (tables) compile_local_tables(model);
    last_ = {false,
             tables,
             changes.workloads.size(),
             addrs.size(),
             out_.tables.rows.size(),
             out_.tables.sets.size()};
    Status st = check_limits(out_, ident_count_, sizes_);
    if (st) {
        PublishHint hint{tables, identities_changed, &idents};
        st = writer.publish(out_, &hint);
    }
    valid_ = st.is_ok();
    return st;
}

}  // namespace kmesh::policy
