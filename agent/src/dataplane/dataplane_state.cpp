#include "agent/src/dataplane/dataplane_state.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <numeric>

namespace kmesh {

uint64_t name_hash(std::string_view name) {
    // FNV-1a 64; 0 is reserved for "unknown" so it is never returned.
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : name) {
        h ^= c;
        h *= 1099511628211ULL;
    }
    return h ? h : 1;
}

std::vector<std::string> hash_collisions(const Model& model) {
    std::map<uint64_t, std::string> seen;
    std::vector<std::string> problems;
    auto check = [&](const std::string& name) {
        auto [it, fresh] = seen.emplace(name_hash(name), name);
        if (!fresh && it->second != name)
            problems.push_back(fmt::format("names '{}' and '{}' hash alike; rename one", it->second, name));
    };
    for (const auto& [key, s] : model.services) check(key);
    for (const auto& [uid, w] : model.workloads) check(uid);
    return problems;
}

std::string MeshState::check_name(const std::string& name) const {
    // A hash in use by a name the model does not hold belongs to another name: a collision.
    if (hashes_.count(name_hash(name)) && !model_.services.count(name) && !model_.workloads.count(name))
        return fmt::format("name '{}' hashes like another resource's; rename one", name);
    return {};
}

void MeshState::forget_hash(const std::string& name) {
    if (!model_.services.count(name) && !model_.workloads.count(name)) hashes_.erase(name_hash(name));
}

namespace {

uint32_t lb_mode_of(const Service& s) {
    if (!s.load_balancing) return KMESH_LB_RANDOM;
    switch (s.load_balancing->mode) {
        case LbMode::kStrict:
            return KMESH_LB_STRICT;
        case LbMode::kFailover:
            return KMESH_LB_FAILOVER;
        default:
            return KMESH_LB_RANDOM;
    }
}

uint16_t default_target(const ServicePort& p) { return p.target_port ? p.target_port : p.service_port; }

}  // namespace

namespace {

// (backend, weight) pairs, sorted by backend, each weight at least 1, turned into slot counts in
// place (see weight_slots).
void scale_slots(std::vector<std::pair<uint64_t, uint32_t>>& out, uint32_t max_slots) {
    if (out.empty()) return;
    uint64_t g = 0;
    for (const auto& [b, weight] : out) g = std::gcd(g, uint64_t{weight});
    uint64_t total = 0;
    for (auto& [b, weight] : out) total += weight /= g;
    const uint64_t budget = std::max<uint64_t>(max_slots, out.size());
    if (total > budget)
        for (auto& [b, weight] : out)  // nearest, at least 1
            weight =
                static_cast<uint32_t>(std::max<uint64_t>(1, (uint64_t{weight} * budget + total / 2) / total));
}

// Per (family, priority): the members listed there with their weights (at least 1), sorted by hash.
using MemberLists =
    std::array<std::array<std::vector<std::pair<uint64_t, uint32_t>>, KMESH_PRIO_COUNT>, KMESH_FAMILY_COUNT>;

void member_lists(const DesiredMembers& members, MemberLists& lists) {
    for (auto& family : lists)
        for (auto& prio : family) prio.clear();
    for (const auto& [b, m] : members)
        for (uint32_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            if (m.families & (1u << f)) lists[f][m.prio].emplace_back(b, std::max<uint32_t>(m.weight, 1));
}

}  // namespace

void weight_slots_into(const BackendSet& list, const MemberWeights& weights, uint32_t max_slots,
                       std::vector<std::pair<uint64_t, uint32_t>>& out) {
    out.clear();
    if (list.empty()) return;
    out.reserve(list.size());
    // The weights, looked up once per backend (the list and the weights are both sorted by hash).
    auto w = weights.begin();
    for (uint64_t b : list) {
        while (w != weights.end() && w->first < b) ++w;
        uint32_t weight = w != weights.end() && w->first == b ? std::max<uint32_t>(w->second, 1) : 1;
        out.emplace_back(b, weight);
    }
    scale_slots(out, max_slots);
}

BackendSet DesiredService::endpoints(uint32_t family, uint32_t prio) const {
    BackendSet out;
    for (const auto& [b, m] : members)
        if ((m.families & (1u << family)) && m.prio == prio) out.insert(out.end(), b);
    return out;
}

MemberWeights DesiredService::weights() const {
    MemberWeights out;
    for (const auto& [b, m] : members) out.insert(out.end(), {b, m.weight});
    return out;
}

uint64_t DesiredService::endpoint_slot_count() const {
    thread_local MemberLists lists;  // scratch: counted for every service before each apply
    member_lists(members, lists);
    uint64_t n = 0;
    for (auto& family : lists)
        for (auto& prio : family) {
            scale_slots(prio, KMESH_MAX_WEIGHT_SLOTS);
            for (const auto& [b, k] : prio) n += k;
        }
    return n;
}

std::map<uint64_t, uint32_t> weight_slots(const BackendSet& list, const MemberWeights& weights,
                                          uint32_t max_slots) {
    std::vector<std::pair<uint64_t, uint32_t>> v;
    weight_slots_into(list, weights, max_slots, v);
    return {v.begin(), v.end()};
}

// Istio's ranking: an endpoint's rank is how many of the routing preferences, in order, it shares
// with this node; its priority is how many it misses. STRICT keeps only full matches.
int MeshState::priority(const Service& s, const Workload& w) const {
    bool allow_unhealthy = s.load_balancing && s.load_balancing->allow_unhealthy;
    if (w.status != WorkloadStatus::kHealthy && !allow_unhealthy) return -1;
    if (!s.load_balancing || s.load_balancing->routing_preference.empty()) return 0;
    const auto& prefs = s.load_balancing->routing_preference;
    size_t matched = 0;
    for (LbScope scope : prefs) {
        bool same = false;
        switch (scope) {
            case LbScope::kRegion:
                same = w.placement->locality.region == node_.locality.region;
                break;
            case LbScope::kZone:
                same = w.placement->locality.zone == node_.locality.zone;
                break;
            case LbScope::kSubzone:
                same = w.placement->locality.subzone == node_.locality.subzone;
                break;
            case LbScope::kNode:
                same = w.placement->node == node_.node;
                break;
            case LbScope::kCluster:
                same = w.placement->cluster_id == node_.cluster_id;
                break;
            case LbScope::kNetwork:
                same = w.placement->network == node_.network;
                break;
        }
        if (!same) break;
        matched++;
    }
    int prio = static_cast<int>(std::min<size_t>(prefs.size() - matched, KMESH_PRIO_COUNT - 1));
    if (s.load_balancing->mode == LbMode::kStrict && prio > 0) return -1;
    return prio;
}

void MeshState::refresh_backend(const std::string& uid) {
    auto it = model_.workloads.find(uid);
    refresh_backend(name_hash(uid), it == model_.workloads.end() ? nullptr : &it->second);
}

void MeshState::refresh_backend(uint64_t h, const Workload* w) {
    dirty_.backends.insert(h);
    DesiredBackend b;
    if (w)
        for (const auto& a : w->addresses) {
            if (a.is_v4() && !(b.flags & KMESH_BACKEND_HAS_V4)) {
                b.addr4 = a.bytes;
                b.flags |= KMESH_BACKEND_HAS_V4;
            } else if (!a.is_v4() && !(b.flags & KMESH_BACKEND_HAS_V6)) {
                b.addr6 = a.bytes;
                b.flags |= KMESH_BACKEND_HAS_V6;
            }
        }
    if (b.flags)
        desired_.backends[h] = b;
    else
        desired_.backends.erase(h);  // nothing to connect to
}

// Recomputes whether workload `uid` is an endpoint of service `key`, at which priority, and its
// per-workload target ports there.
void MeshState::refresh_member(const std::string& key, const std::string& uid) {
    auto svc = model_.services.find(key);
    auto wl = model_.workloads.find(uid);
    refresh_member(key, name_hash(key), svc == model_.services.end() ? nullptr : &svc->second, name_hash(uid),
                   wl == model_.workloads.end() ? nullptr : &wl->second);
}

// The same, with the names already looked up (svc, wl: the model's entries, or null when absent):
// a push of 100k workloads looks each one up once, not once per service it lists.
void MeshState::refresh_member(const std::string& key, uint64_t hs, const Service* svc, uint64_t hw,
                               const Workload* wl) {
    auto ds = desired_.services.find(hs);
    if (ds != desired_.services.end()) {
        dirty_.services.insert(hs);
        ds->second.members.erase(hw);
    }
    for (auto it = desired_.ports.lower_bound(PortKey{hw, hs, 0});
         it != desired_.ports.end() && it->first.backend == hw && it->first.service == hs;) {
        auto n = overrides_.find({hs, it->first.port});
        if (n != overrides_.end() && --n->second == 0) overrides_.erase(n);
        it = desired_.ports.erase(it);
        dirty_.backends.insert(hw);
    }
    if (!svc || !wl || ds == desired_.services.end()) return;
    auto backend = desired_.backends.find(hw);
    if (backend == desired_.backends.end()) return;
    auto listed = wl->services.find(key);
    if (listed == wl->services.end()) return;
    // A service port with target 0 is a named port, resolved per workload: a workload that has no
    // entry for it does not serve it (istiod leaves the port out when the pod lacks the name), and
    // ztunnel skips it for that port. The maps keep one endpoint list per service, not per port,
    // so a connect to that port could not avoid this workload: it is left out of the service
    // rather than sent to a port it does not listen on.
    for (const auto& port : svc->ports) {
        if (port.target_port) continue;
        bool mapped = false;
        for (const auto& own : listed->second) mapped |= own.service_port == port.service_port;
        if (!mapped) return;
    }
    int prio = priority(*svc, *wl);
    if (prio < 0) return;
    uint32_t flags = backend->second.flags;
    // A weight of 0 drains: the workload stays a member (km_member, weight 0: session affinity
    // stops reusing it, UDP replies from it are still recognised) but has no slot to be picked.
    DesiredMember member{wl->capacity, 0, 0};
    if (wl->capacity > 0)
        for (uint32_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            if (backend_serves(flags, f)) member.families |= static_cast<uint8_t>(1u << f);
    if (member.families) member.prio = static_cast<uint8_t>(prio);  // in no list: no priority
    ds->second.members[hw] = member;
    for (const auto& port : svc->ports) {
        uint16_t target = default_target(port);
        for (const auto& own : listed->second)
            if (own.service_port == port.service_port && own.target_port) target = own.target_port;
        if (target == default_target(port)) continue;
        // A port listed twice (TCP and UDP of one number) is one override, counted once.
        if (!desired_.ports.emplace(PortKey{hw, hs, htons(port.service_port)}, htons(target)).second)
            continue;
        overrides_[{hs, htons(port.service_port)}]++;
        dirty_.backends.insert(hw);
    }
}

void MeshState::elect(const kmesh_frontend_key& fk) {
    auto c = claimants_.find(fk);
    auto current = desired_.frontends.find(fk);
    if (current != desired_.frontends.end()) dirty_.services.insert(current->second.service);
    if (c == claimants_.end() || c->second.empty()) {
        if (c != claimants_.end()) claimants_.erase(c);
        if (current != desired_.frontends.end()) desired_.frontends.erase(current);
        note_conflict(fk, {});
        return;
    }
    note_conflict(fk, c->second);
    uint64_t owner = *c->second.rbegin();
    desired_.frontends[fk] = desired_.services.at(owner).frontends.at(fk);
    dirty_.services.insert(owner);
}

std::string frontend_key_str(const kmesh_frontend_key& k) {
    IpAddr a;
    std::memcpy(a.bytes.data(), k.addr, 16);
    return a.is_v4() ? fmt::format("{}:{}", a.str(), ntohs(k.port))
                     : fmt::format("[{}]:{}", a.str(), ntohs(k.port));
}

std::string MeshState::service_name(uint64_t hash) const {
    for (const auto& [key, s] : model_.services)
        if (name_hash(key) == hash) return key;
    return fmt::format("unknown:{:016x}", hash);
}

// Logs a conflict once when it appears (or its claimants change) and once when it is resolved.
void MeshState::note_conflict(const kmesh_frontend_key& fk, const std::set<uint64_t>& claimants) {
    auto logged = conflicts_logged_.find(fk);
    if (claimants.size() < 2) {
        if (logged == conflicts_logged_.end()) return;
        conflicts_logged_.erase(logged);
        spdlog::info("VIP conflict on {} resolved{}", frontend_key_str(fk),
                     claimants.empty() ? "" : ": " + service_name(*claimants.begin()) + " holds it alone");
        return;
    }
    if (logged != conflicts_logged_.end() && logged->second == claimants) return;
    conflicts_logged_[fk] = claimants;
    std::string losers;
    for (auto it = std::next(claimants.rbegin()); it != claimants.rend(); ++it)
        losers += (losers.empty() ? "" : ", ") + service_name(*it);
    spdlog::warn(
        "VIP conflict: {} is claimed by {} services; {} holds it (largest name hash wins), connects "
        "meant for {} reach its endpoints",
        frontend_key_str(fk), claimants.size(), service_name(*claimants.rbegin()), losers);
}

std::vector<MeshState::VipConflict> MeshState::vip_conflicts() const {
    std::vector<VipConflict> out;
    for (const auto& [fk, claimants] : claimants_) {
        if (claimants.size() < 2) continue;
        VipConflict c{frontend_key_str(fk), service_name(*claimants.rbegin()), {}};
        for (auto it = std::next(claimants.rbegin()); it != claimants.rend(); ++it)
            c.losers.push_back(service_name(*it));
        out.push_back(std::move(c));
    }
    return out;
}

void MeshState::refresh_frontend_flags(const std::string& key) {
    refresh_frontend_flags(key, name_hash(key));
}

void MeshState::refresh_frontend_flags(const std::string&, uint64_t hs) {
    auto ds = desired_.services.find(hs);
    if (ds == desired_.services.end()) return;
    for (auto& [fk, target] : ds->second.frontends) {
        auto n = overrides_.find({hs, fk.port});
        target.flags = n != overrides_.end() && n->second ? KMESH_FRONTEND_PER_WORKLOAD_PORTS : 0;
        auto fe = desired_.frontends.find(fk);
        if (fe != desired_.frontends.end() && fe->second.service == hs) fe->second.flags = target.flags;
    }
}

void MeshState::refresh_service(const std::string& key) {
    uint64_t hs = name_hash(key);
    const Service& s = model_.services.at(key);
    dirty_.services.insert(hs);
    DesiredService& ds = desired_.services[hs];
    ds.lb_mode = lb_mode_of(s);
    ds.flags =
        (s.round_robin ? KMESH_SERVICE_ROUND_ROBIN : 0) | (s.affinity_timeout ? KMESH_SERVICE_AFFINITY : 0);
    ds.affinity_timeout = s.affinity_timeout;
    std::set<kmesh_frontend_key> affected;
    for (const auto& [fk, target] : ds.frontends) {
        claimants_[fk].erase(hs);
        affected.insert(fk);
    }
    ds.frontends.clear();
    // PASSTHROUGH: no endpoint selection, the connection goes to the address it was made to; so
    // the service claims no frontend and connect() passes untouched.
    bool passthrough = s.load_balancing && s.load_balancing->mode == LbMode::kPassthrough;
    for (const auto& vip : s.addresses) {
        // ztunnel accepts any VIP, but its capture never sees connections to loopback, unspecified
        // (local) or multicast addresses; a frontend for one would hijack pods' local traffic.
        if (passthrough || vip.is_unspecified() || vip.is_loopback() || vip.is_multicast()) continue;
        for (const auto& port : s.ports) {
            kmesh_frontend_key fk{};
            std::memcpy(fk.addr, vip.bytes.data(), 16);
            fk.port = htons(port.service_port);
            ds.frontends[fk] = FrontendTarget{hs, htons(default_target(port)), 0};
            claimants_[fk].insert(hs);
            affected.insert(fk);
        }
    }
    if (auto m = members_.find(key); m != members_.end())
        for (const WorkloadEntry* wl : m->second)
            refresh_member(key, hs, &s, name_hash(wl->first), &wl->second);
    refresh_frontend_flags(key);
    for (const auto& fk : affected) elect(fk);
}

void MeshState::upsert_service(const Service& s) {
    std::string key = s.key();
    auto it = model_.services.find(key);
    if (it != model_.services.end() && it->second == s) return;
    if (waypoint_relevant(s) || (it != model_.services.end() && waypoint_relevant(it->second)))
        waypoints_changed();
    note_change(changes_.services, key);
    model_.services[key] = s;
    hashes_.insert(name_hash(key));
    refresh_service(key);
}

void MeshState::remove_service(const std::string& key) {
    if (auto it = model_.services.find(key); it != model_.services.end() && waypoint_relevant(it->second))
        waypoints_changed();
    if (!model_.services.erase(key)) return;
    note_change(changes_.services, key);
    uint64_t hs = name_hash(key);
    dirty_.services.insert(hs);
    for (const WorkloadEntry* wl : members_[key])  // drops ports, endpoints
        refresh_member(key, hs, nullptr, name_hash(wl->first), &wl->second);
    auto ds = desired_.services.find(hs);
    if (ds != desired_.services.end()) {
        std::vector<kmesh_frontend_key> released;
        for (const auto& [fk, target] : ds->second.frontends) {
            claimants_[fk].erase(hs);
            released.push_back(fk);
        }
        desired_.services.erase(ds);
        for (const auto& fk : released) elect(fk);  // another claimant, if any, takes the VIP
    }
    if (members_[key].empty()) members_.erase(key);
    forget_hash(key);
}

void MeshState::upsert_workload(const Workload& w) { upsert_workload_as(w); }

void MeshState::upsert_workload(Workload&& w) { upsert_workload_as(std::move(w)); }

template <typename W>
void MeshState::upsert_workload_as(W&& w) {
    // One lookup of the uid in the model (100k workloads: each a walk of long, alike strings); the
    // refreshes below are handed the entry.
    auto it = model_.workloads.lower_bound(w.uid);
    const bool existed = it != model_.workloads.end() && it->first == w.uid;
    if (existed && it->second == w) return;
    if (waypoint_relevant(w) || (existed && waypoint_relevant(it->second))) waypoints_changed();
    note_change(changes_.workloads, w.uid);
    // Services it no longer lists: out of their members, and refreshed below.
    std::vector<std::string> left;
    if (existed)
        for (const auto& [key, ports] : it->second.services)
            if (!w.services.count(key)) {
                left.push_back(key);
                auto m = members_.find(key);
                if (m == members_.end()) continue;
                m->second.erase(w.uid);
                if (m->second.empty() && !model_.services.count(key)) members_.erase(m);
            }
    // `w` may be moved from here on: what follows reads the model's entry.
    if (existed && on_node(it->second)) local_workloads_--;
    if (existed)
        it->second = std::forward<W>(w);
    else  // the key is copied from w.uid before w is moved (a pair's members are made in order)
        it = model_.workloads.emplace_hint(it, w.uid, std::forward<W>(w));
    // Members point at the model's entry (stable until it is erased).
    const Workload& wl = it->second;
    if (on_node(wl)) local_workloads_++;
    for (const auto& [key, ports] : wl.services) members_[key].insert(&*it);
    const uint64_t hw = name_hash(it->first);
    hashes_.insert(hw);
    if (learn_locality_ && !wl.placement->node.empty() && wl.placement->node == node_.node &&
        wl.placement->locality != node_.locality) {
        node_.locality = wl.placement->locality;  // every priority is relative to it
        for (const auto& [key, s] : model_.services) refresh_service(key);
    }
    refresh_backend(hw, &wl);
    auto touch = [&](const std::string& key) {
        uint64_t hs = name_hash(key);
        auto svc = model_.services.find(key);
        refresh_member(key, hs, svc == model_.services.end() ? nullptr : &svc->second, hw, &wl);
        refresh_frontend_flags(key, hs);
    };
    for (const auto& [key, ports] : wl.services) touch(key);
    for (const auto& key : left) touch(key);
}

void MeshState::remove_workload(const std::string& uid) {
    auto it = model_.workloads.find(uid);
    if (it == model_.workloads.end()) return;
    if (waypoint_relevant(it->second)) waypoints_changed();
    note_change(changes_.workloads, uid);
    if (on_node(it->second)) local_workloads_--;
    auto services = it->second.services;
    // Out of the members before its key (which they view) goes with the model's entry.
    for (const auto& [key, ports] : services) members_[key].erase(uid);
    model_.workloads.erase(it);
    // The workload is gone: no lookup of it (a miss in 100k names costs as much as a hit).
    const uint64_t hw = name_hash(uid);
    for (const auto& [key, ports] : services) {
        uint64_t hs = name_hash(key.view());
        auto svc = model_.services.find(key);
        refresh_member(key, hs, svc == model_.services.end() ? nullptr : &svc->second, hw, nullptr);
        refresh_frontend_flags(key, hs);
        if (auto m = members_.find(key);
            m != members_.end() && m->second.empty() && svc == model_.services.end())
            members_.erase(m);
    }
    refresh_backend(hw, nullptr);
    forget_hash(uid);
}

void MeshState::upsert_policy(const AuthzPolicy& p) {
    auto [it, fresh] = model_.policies.try_emplace(p.key(), p);
    if (!fresh) {
        if (it->second == p) return;
        it->second = p;
    }
    policies_version_++;
}

void MeshState::remove_policy(const std::string& key) {
    if (model_.policies.erase(key)) policies_version_++;
}

void MeshState::replace(const Model& next) {
    if (model_.policies != next.policies) {
        model_.policies = next.policies;
        policies_version_++;
    }
    std::vector<std::string> gone;
    for (const auto& [key, s] : model_.services)
        if (!next.services.count(key)) gone.push_back(key);
    for (const auto& key : gone) remove_service(key);
    gone.clear();
    for (const auto& [uid, w] : model_.workloads)
        if (!next.workloads.count(uid)) gone.push_back(uid);
    for (const auto& uid : gone) remove_workload(uid);
    for (const auto& [key, s] : next.services) upsert_service(s);
    for (const auto& [uid, w] : next.workloads) upsert_workload(w);
}

std::string split_name(const DesiredSplit& s) {
    std::string out = "split/";
    for (size_t i = 0; i < s.services.size(); i++)
        out += fmt::format("{}{:016x}*{}", i ? "," : "", s.services[i].first, s.services[i].second);
    return out;
}

std::string waypoint_name(const Waypoint& w) {
    return w.address ? "address/" + w.address->str() : "hostname/" + w.hostname;
}

bool MeshState::waypoint_relevant(const Service& s) const {
    return s.waypoint || wp_hostnames_.count(s.key());
}

bool MeshState::waypoint_relevant(const Workload& w) const {
    if (w.waypoint) return true;
    for (const auto& a : w.addresses)
        if (wp_addresses_.count(a)) return true;
    return false;
}

namespace {

void add_waypoint_address(kmesh_waypoint_value& v, const IpAddr& a) {
    if (a.is_v4() && !(v.flags & KMESH_WAYPOINT_HAS_V4)) {
        std::memcpy(v.addr4, a.bytes.data(), 16);
        v.flags |= KMESH_WAYPOINT_HAS_V4;
    } else if (!a.is_v4() && !(v.flags & KMESH_WAYPOINT_HAS_V6)) {
        std::memcpy(v.addr6, a.bytes.data(), 16);
        v.flags |= KMESH_WAYPOINT_HAS_V6;
    }
}

}  // namespace

// Rebuilds both waypoint tables from the model.
//  - A waypoint given by address is that address, plus the other family's address of the workload
//    owning it (GatewayAddress carries one address; a dual-stack waypoint pod serves both).
//  - A waypoint given by hostname is the VIPs of the service "namespace/hostname" the agent knows
//    (one per family); unknown, it has no address and its users' connects fail with EHOSTUNREACH
//    instead of bypassing it.
//  - Service VIPs take precedence over workload addresses; among services (and among workloads) the
//    first by name wins, so the outcome does not depend on update order.
//  - No waypoint address is ever a redirect destination: a workload that is its own waypoint, or a
//    connect to a waypoint, goes straight there (the BPF side checks the same, belt and braces).
void MeshState::refresh_waypoints() {
    wp_stale_ = false;
    desired_.waypoints.clear();
    desired_.waypoint_dests.clear();
    wp_hostnames_.clear();
    wp_addresses_.clear();
    std::map<IpAddr, const Workload*> by_address;
    bool indexed = false;
    auto resolve = [&](const Waypoint& w) {
        uint64_t id = name_hash("waypoint:" + waypoint_name(w));
        if (desired_.waypoints.count(id)) return id;
        kmesh_waypoint_value v{};
        v.port = htons(KMESH_WAYPOINT_PORT);
        if (w.address) {
            wp_addresses_.insert(*w.address);
            add_waypoint_address(v, *w.address);
            if (!indexed) {
                for (const auto& [uid, wl] : model_.workloads)
                    for (const auto& a : wl.addresses) by_address.emplace(a, &wl);
                indexed = true;
            }
            if (auto owner = by_address.find(*w.address); owner != by_address.end())
                for (const auto& a : owner->second->addresses) add_waypoint_address(v, a);
        } else {
            wp_hostnames_.insert(w.hostname);
            v.lookup_port = htons(w.port);
            if (auto s = model_.services.find(w.hostname); s != model_.services.end())
                for (const auto& vip : s->second.addresses) add_waypoint_address(v, vip);
        }
        desired_.waypoints[id] = v;
        return id;
    };
    auto point = [&](const IpAddr& a, uint64_t id, uint32_t kind) {
        if (a.is_unspecified() || a.is_loopback() || a.is_multicast()) return;
        kmesh_wp_dest_key k{};
        std::memcpy(k.addr, a.bytes.data(), 16);
        desired_.waypoint_dests.emplace(k, kmesh_wp_dest_value{id, kind, 0});
    };
    for (const auto& [key, s] : model_.services)
        if (s.waypoint) {
            uint64_t id = resolve(*s.waypoint);
            for (const auto& vip : s.addresses) point(vip, id, KMESH_WP_KIND_SERVICE);
        }
    for (const auto& [uid, w] : model_.workloads)
        if (w.waypoint) {
            uint64_t id = resolve(*w.waypoint);
            for (const auto& a : w.addresses) point(a, id, KMESH_WP_KIND_WORKLOAD);
        }
    for (const auto& [id, v] : desired_.waypoints) {
        kmesh_wp_dest_key k{};
        if (v.flags & KMESH_WAYPOINT_HAS_V4) {
            std::memcpy(k.addr, v.addr4, 16);
            desired_.waypoint_dests.erase(k);
        }
        if (v.flags & KMESH_WAYPOINT_HAS_V6) {
            std::memcpy(k.addr, v.addr6, 16);
            desired_.waypoint_dests.erase(k);
        }
    }
}

DesiredState build_desired(const Model& model, const NodeInfo& node) {
    MeshState m(node);
    m.replace(model);
    return m.desired();
}

bool Plan::empty() const { return size() == 0; }

size_t Plan::size() const {
    return put_backends.size() + put_services.size() + add_endpoints.size() + put_ports.size() +
           put_frontends.size() + delete_frontends.size() + remove_endpoints.size() + delete_ports.size() +
           put_members.size() + delete_members.size() + delete_services.size() + delete_backends.size() +
           put_waypoints.size() + put_waypoint_dests.size() + delete_waypoint_dests.size() +
           delete_waypoints.size() + put_limits.size() + put_splits.size() + delete_splits.size() +
           delete_limits.size();
}

namespace {

template <typename Map>
void keys_into(const Map& m, std::vector<uint64_t>& out) {
    for (const auto& [k, v] : m) out.push_back(k);
}

void sort_unique(std::vector<uint64_t>& v) {
    std::sort(v.begin(), v.end());
    v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

// The names to compare are gathered in sorted vectors (the plan keeps the order of hashes it always
// had), not in sets: a full push compares 100k backends, and a set copy of them costs a node each.
Plan diff(const MapState& cur, const DesiredState& want, const Dirty& dirty) {
    Plan plan;
    std::vector<uint64_t> services(dirty.services.begin(), dirty.services.end());
    std::vector<uint64_t> backends(dirty.backends.begin(), dirty.backends.end());
    if (dirty.all) {
        services.reserve(services.size() + cur.services.size() + want.services.size() + 1);
        keys_into(cur.services, services);
        keys_into(want.services, services);
        for (const auto& [k, t] : cur.frontends) services.push_back(t.service);  // incl. 0: unknown ids
        sort_unique(services);
        backends.reserve(backends.size() + cur.backends.size() + want.backends.size());
        keys_into(cur.backends, backends);
        keys_into(want.backends, backends);
        sort_unique(backends);
    }

    for (uint64_t h : backends) {
        auto w = want.backends.find(h);
        auto c = cur.backends.find(h);
        if (w != want.backends.end()) {
            if (c == cur.backends.end() || !(c->second.value == w->second))
                plan.put_backends.emplace_back(h, w->second);
        } else if (dirty.keep.count(h)) {
            continue;  // a rejected workload's last good backend and ports stay
        } else if (c != cur.backends.end()) {
            plan.delete_backends.push_back(h);
        }
        // Per-workload ports live with their backend.
        auto wp = want.ports.lower_bound(PortKey{h, 0, 0});
        for (; wp != want.ports.end() && wp->first.backend == h; ++wp) {
            auto cp = cur.ports.find(wp->first);
            if (cp == cur.ports.end() || cp->second != wp->second)
                plan.put_ports.emplace_back(wp->first, wp->second);
        }
        for (auto cp = cur.ports.lower_bound(PortKey{h, 0, 0});
             cp != cur.ports.end() && cp->first.backend == h; ++cp)
            // A kept (rejected) service's overrides stay with it.
            if (!want.ports.count(cp->first) && !dirty.keep.count(cp->first.service))
                plan.delete_ports.push_back(cp->first);
    }

    if (dirty.all || dirty.waypoints) {
        for (const auto& [id, v] : want.waypoints)
            if (auto c = cur.waypoints.find(id); c == cur.waypoints.end() || !(c->second == v))
                plan.put_waypoints.emplace_back(id, v);
        for (const auto& [id, v] : cur.waypoints)
            if (!want.waypoints.count(id)) plan.delete_waypoints.push_back(id);
        for (const auto& [k, v] : want.waypoint_dests)
            if (auto c = cur.waypoint_dests.find(k); c == cur.waypoint_dests.end() || !(c->second == v))
                plan.put_waypoint_dests.emplace_back(k, v);
        for (const auto& [k, v] : cur.waypoint_dests)
            if (!want.waypoint_dests.count(k)) plan.delete_waypoint_dests.push_back(k);
    }

    std::set<kmesh_frontend_key> frontends_deleted;
    // Kernel-native tables, compared whole (a few thousand entries at most). Frontends naming a
    // split belong to no service's claims (their target is a split hash), so they are compared
    // here too; a frontend naming a service (limited or not) is its service's, below.
    if (dirty.all || dirty.native) {
        for (const auto& [h, l] : want.limits)
            if (auto c = cur.limits.find(h); c == cur.limits.end() || !(c->second.value == l))
                plan.put_limits.emplace_back(h, l);
        for (const auto& [h, l] : cur.limits)
            if (!want.limits.count(h)) plan.delete_limits.push_back(h);
        for (const auto& [h, sp] : want.splits)
            if (auto c = cur.splits.find(h); c == cur.splits.end() || !(c->second.value == sp))
                plan.put_splits.emplace_back(h, sp);
        for (const auto& [h, sp] : cur.splits)
            if (!want.splits.count(h)) plan.delete_splits.push_back(h);
        for (const auto& [fk, t] : want.frontends) {
            if (!(t.flags & KMESH_FRONTEND_SPLIT)) continue;
            auto cf = cur.frontends.find(fk);
            if (cf == cur.frontends.end() || !(cf->second == t)) plan.put_frontends.emplace_back(fk, t);
        }
        for (const auto& [fk, t] : cur.frontends)
            if ((t.flags & KMESH_FRONTEND_SPLIT) && !want.frontends.count(fk) &&
                frontends_deleted.insert(fk).second)
                plan.delete_frontends.push_back(fk);
    }
    // Scratch reused across services (no allocation per service and list).
    std::vector<uint64_t> kept_members;
    std::vector<std::pair<uint64_t, uint32_t>> wanted;
    std::vector<uint32_t> have;
    MemberLists lists;
    for (uint64_t h : services) {
        auto w = want.services.find(h);
        auto c = cur.services.find(h);
        if (w != want.services.end()) {
            const DesiredService& svc = w->second;
            if (c == cur.services.end() || !(c->second.params() == svc.params()))
                plan.put_services.emplace_back(h, svc.params());
            // Members: written before the backend's first slot, deleted after its last (the
            // writer's stage order); a kept (rejected) workload's membership stays.
            kept_members.clear();
            if (c != cur.services.end())
                for (const auto& [bid, weight] : c->second.members) {
                    auto bh = cur.backend_hash_by_id.find(bid);
                    uint64_t backend = bh == cur.backend_hash_by_id.end() ? 0 : bh->second;
                    auto wm = backend ? svc.members.find(backend) : svc.members.end();
                    if (wm != svc.members.end()) {
                        kept_members.push_back(backend);
                        if (wm->second.weight != weight)
                            plan.put_members.push_back({h, backend, wm->second.weight});
                    } else if (!backend || !dirty.keep.count(backend)) {
                        plan.delete_members.push_back({h, bid});
                    }
                }
            std::sort(kept_members.begin(), kept_members.end());
            for (const auto& [backend, member] : svc.members)
                if (!std::binary_search(kept_members.begin(), kept_members.end(), backend))
                    plan.put_members.push_back({h, backend, member.weight});
            member_lists(svc.members, lists);
            for (uint32_t f = 0; f < KMESH_FAMILY_COUNT; f++)
                for (uint32_t prio = 0; prio < KMESH_PRIO_COUNT; prio++) {
                    const std::vector<uint32_t>* slots =
                        c != cur.services.end() ? &c->second.slots[f][prio] : nullptr;
                    if (lists[f][prio].empty() && (!slots || slots->empty())) continue;
                    // Slots wanted per backend (sorted by hash) and, beside them, how many the maps
                    // hold already.
                    wanted.assign(lists[f][prio].begin(), lists[f][prio].end());
                    scale_slots(wanted, KMESH_MAX_WEIGHT_SLOTS);
                    have.assign(wanted.size(), 0);
                    auto find_wanted = [&](uint64_t backend) -> size_t {
                        auto it = std::lower_bound(wanted.begin(), wanted.end(), backend,
                                                   [](const auto& e, uint64_t b) { return e.first < b; });
                        return it != wanted.end() && it->first == backend ? size_t(it - wanted.begin())
                                                                          : wanted.size();
                    };
                    if (slots)
                        for (uint32_t i = 0; i < slots->size(); i++) {
                            auto bh = cur.backend_hash_by_id.find((*slots)[i]);
                            uint64_t backend = bh == cur.backend_hash_by_id.end() ? 0 : bh->second;
                            size_t wn = backend ? find_wanted(backend) : wanted.size();
                            // Unknown or unwanted slots go, except a kept (rejected) workload's; a
                            // backend keeps as many slots as its weight gives it, no more.
                            if (!backend || (wn == wanted.size() && !dirty.keep.count(backend)) ||
                                (wn != wanted.size() && have[wn] >= wanted[wn].second))
                                plan.remove_endpoints.push_back({h, f, prio, i + 1});
                            else if (wn != wanted.size())
                                have[wn]++;
                        }
                    for (size_t j = 0; j < wanted.size(); j++)
                        for (uint32_t k = have[j]; k < wanted[j].second; k++)
                            plan.add_endpoints.push_back({h, f, prio, wanted[j].first});
                }
            for (const auto& [fk, claim] : svc.frontends) {
                auto target = want.frontends.find(fk);
                if (target == want.frontends.end() || target->second.service != h) continue;
                FrontendTarget t = target->second;
                // A kept (rejected) workload's own target port here still needs the flag.
                for (uint64_t kept : dirty.keep)
                    if (!(t.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS) &&
                        cur.ports.count(PortKey{kept, h, fk.port}))
                        t.flags |= KMESH_FRONTEND_PER_WORKLOAD_PORTS;
                auto cf = cur.frontends.find(fk);
                if (cf == cur.frontends.end() || !(cf->second == t)) plan.put_frontends.emplace_back(fk, t);
            }
        } else if (dirty.keep.count(h)) {
            continue;  // a rejected service keeps its last good entry, endpoints and frontends
        } else if (c != cur.services.end()) {
            plan.delete_services.push_back(h);
        }
        // Frontends this service had that nobody wants any more.
        auto owned = cur.frontends_by_service.find(h);
        if (owned != cur.frontends_by_service.end())
            for (const auto& fk : owned->second)
                if (!want.frontends.count(fk) && frontends_deleted.insert(fk).second)
                    plan.delete_frontends.push_back(fk);
    }
    return plan;
}

}  // namespace kmesh
