#include "agent/src/dataplane/map_writer.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <utility>

namespace kmesh {

uint32_t IdAllocator::allocate() {
    if (used_.size() >= max_) return 0;
    uint32_t id = hint_;
    while (used_.count(id)) id = id % max_ + 1;
    used_.insert(id);
    hint_ = id % max_ + 1;
    return id;
}

namespace {

template <typename T>
T read_as(const void* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

}  // namespace

MapState recover_map_state(const MapOps& ops) {
    MapState st;
    std::map<uint32_t, uint64_t> service_hash_by_id;  // kept ids only
    ops.for_each(MapId::kService, [&](const void* k, const void* v) {
        auto id = read_as<uint32_t>(k);
        auto sv = read_as<kmesh_service_value>(v);
        st.reserved_service_ids.insert(id);
        if (st.services.count(sv.name_hash)) {  // a second id for one name: unreachable once repaired
            st.stray_services.push_back(id);
            return true;
        }
        auto& s = st.services[sv.name_hash];
        s.id = id;
        s.lb_mode = sv.lb_mode;
        s.flags = sv.flags;
        s.affinity_timeout = sv.affinity_timeout;
        for (int f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (int p = 0; p < KMESH_PRIO_COUNT; p++) s.slots[f][p].assign(sv.endpoint_count[f][p], 0);
        service_hash_by_id[id] = sv.name_hash;
        return true;
    });
    ops.for_each(MapId::kBackend, [&](const void* k, const void* v) {
        auto id = read_as<uint32_t>(k);
        auto bv = read_as<kmesh_backend_value>(v);
        st.reserved_backend_ids.insert(id);
        if (st.backends.count(bv.name_hash)) {
            st.stray_backends.push_back(id);
            return true;
        }
        auto& b = st.backends[bv.name_hash];
        b.id = id;
        std::memcpy(b.value.addr4.data(), bv.addr4, 16);
        std::memcpy(b.value.addr6.data(), bv.addr6, 16);
        b.value.flags = bv.flags;
        st.backend_hash_by_id[id] = bv.name_hash;
        return true;
    });
    ops.for_each(MapId::kEndpoint, [&](const void* k, const void* v) {
        auto ek = read_as<kmesh_endpoint_key>(k);
        auto ev = read_as<kmesh_endpoint_value>(v);
        st.reserved_service_ids.insert(ek.service_id);
        st.reserved_backend_ids.insert(ev.backend_id);
        auto sh = service_hash_by_id.find(ek.service_id);
        if (sh == service_hash_by_id.end() || ek.family >= KMESH_FAMILY_COUNT ||
            ek.prio >= KMESH_PRIO_COUNT || ek.index == 0 ||
            ek.index > st.services[sh->second].slots[ek.family][ek.prio].size()) {
            st.stray_endpoints.push_back(ek);
            return true;
        }
        st.services[sh->second].slots[ek.family][ek.prio][ek.index - 1] = ev.backend_id;
        return true;
    });
    ops.for_each(MapId::kFrontend, [&](const void* k, const void* v) {
        auto fk = read_as<kmesh_frontend_key>(k);
        auto fv = read_as<kmesh_frontend_value>(v);
        st.reserved_service_ids.insert(fv.service_id);
        auto sh = service_hash_by_id.find(fv.service_id);
        // Hash 0 (no desired service has it) makes the next diff rewrite or delete the entry.
        FrontendTarget t{sh == service_hash_by_id.end() ? 0 : sh->second, fv.target_port, fv.flags};
        st.frontends[fk] = t;
        st.frontends_by_service[t.service].insert(fk);
        return true;
    });
    ops.for_each(MapId::kMember, [&](const void* k, const void* v) {
        auto mk = read_as<kmesh_member_key>(k);
        auto mv = read_as<kmesh_member_value>(v);
        auto sh = service_hash_by_id.find(mk.service_id);
        if (sh == service_hash_by_id.end() || !st.backend_hash_by_id.count(mk.backend_id))
            st.stray_members.push_back(mk);
        else
            st.services[sh->second].members[mk.backend_id] = mv.weight;
        return true;
    });
    ops.for_each(MapId::kWaypoint, [&](const void* k, const void* v) {
        st.waypoints[read_as<uint64_t>(k)] = read_as<kmesh_waypoint_value>(v);
        return true;
    });
    ops.for_each(MapId::kWaypointDest, [&](const void* k, const void* v) {
        st.waypoint_dests[read_as<kmesh_wp_dest_key>(k)] = read_as<kmesh_wp_dest_value>(v);
        return true;
    });
    ops.for_each(MapId::kPort, [&](const void* k, const void* v) {
        auto pk = read_as<kmesh_port_key>(k);
        auto pv = read_as<kmesh_port_value>(v);
        auto sh = service_hash_by_id.find(pk.service_id);
        auto bh = st.backend_hash_by_id.find(pk.backend_id);
        if (sh == service_hash_by_id.end() || bh == st.backend_hash_by_id.end())
            st.stray_ports.push_back(pk);
        else
            st.ports[PortKey{bh->second, sh->second, pk.service_port}] = pv.target_port;
        return true;
    });
    return st;
}

MapWriter::MapWriter(MapOps& ops, MapState state, MapCapacity capacity, Metrics& metrics)
    : ops_(ops),
      state_(std::move(state)),
      capacity_(capacity),
      metrics_(metrics),
      service_ids_(capacity.services),
      backend_ids_(capacity.backends) {
    for (const auto& [h, s] : state_.services) service_ids_.mark_used(s.id);
    for (const auto& [h, b] : state_.backends) backend_ids_.mark_used(b.id);
    for (uint32_t id : state_.reserved_service_ids) service_ids_.mark_used(id);
    for (uint32_t id : state_.reserved_backend_ids) backend_ids_.mark_used(id);
}

int MapWriter::fail(MapId map, int err, const std::string& what) {
    auto m = static_cast<int>(map);
    metrics_.map_write_errors[m]++;
    // A full hash map answers E2BIG on insert; ENOSPC/ENOMEM are kernel allocation failures.
    bool full = err == -E2BIG || err == -ENOSPC || err == -ENOMEM;
    if (full) metrics_.map_full_errors[m]++;
    errors_.push_back(fmt::format("{} {}: {}{}", map_name(map), what, std::strerror(-err),
                                  full ? " (map full: raise its size flag)" : ""));
    return err;
}

void MapWriter::forget_frontend(const kmesh_frontend_key& key) {
    auto it = state_.frontends.find(key);
    if (it == state_.frontends.end()) return;
    auto owned = state_.frontends_by_service.find(it->second.service);
    if (owned != state_.frontends_by_service.end()) {
        owned->second.erase(key);
        if (owned->second.empty()) state_.frontends_by_service.erase(owned);
    }
    state_.frontends.erase(it);
}

void MapWriter::drop_entry(const kmesh_endpoint_key& key) {
    int err = ops_.remove(MapId::kEndpoint, &key);
    if (err && err != -ENOENT) state_.stray_endpoints.push_back(key);
}

int MapWriter::write_service(uint64_t hash) {
    const auto& s = state_.services.at(hash);
    kmesh_service_value v{};
    for (int f = 0; f < KMESH_FAMILY_COUNT; f++)
        for (int p = 0; p < KMESH_PRIO_COUNT; p++)
            v.endpoint_count[f][p] = static_cast<uint32_t>(s.slots[f][p].size());
    v.lb_mode = s.lb_mode;
    v.flags = s.flags;
    v.affinity_timeout = s.affinity_timeout;
    v.name_hash = hash;
    metrics_.map_writes++;
    int err = ops_.update(MapId::kService, &s.id, &v);
    return err ? fail(MapId::kService, err, fmt::format("write service {}", s.id)) : 0;
}

void MapWriter::put_backend(uint64_t hash, const DesiredBackend& b) {
    auto it = state_.backends.find(hash);
    uint32_t id = it != state_.backends.end() ? it->second.id : backend_ids_.allocate();
    if (!id) {
        fail(MapId::kBackend, -E2BIG, "allocate id");
        return;
    }
    kmesh_backend_value v{};
    std::memcpy(v.addr4, b.addr4.data(), 16);
    std::memcpy(v.addr6, b.addr6.data(), 16);
    v.flags = b.flags;
    v.name_hash = hash;
    metrics_.map_writes++;
    if (int err = ops_.update(MapId::kBackend, &id, &v)) {
        if (it == state_.backends.end()) backend_ids_.release(id);
        fail(MapId::kBackend, err, fmt::format("write backend {}", id));
        return;
    }
    state_.backends[hash] = {id, b};
    state_.backend_hash_by_id[id] = hash;
}

// Creates a service empty: unreachable until its frontend is written, but with an id, so that
// port overrides can be written before any endpoint that needs them is counted.
void MapWriter::create_service(uint64_t hash, const ServiceParams& params) {
    MapState::Service svc;
    if (!(svc.id = service_ids_.allocate())) {
        fail(MapId::kService, -E2BIG, "allocate id");
        return;
    }
    svc.lb_mode = params.lb_mode;
    svc.flags = params.flags;
    svc.affinity_timeout = params.affinity_timeout;
    state_.services[hash] = svc;
    if (write_service(hash)) {
        state_.services.erase(hash);
        service_ids_.release(svc.id);
    }
}

// Grows one service: endpoint entries past the current counts first, then the counts (and LB
// mode) in a single service write, so no connect picks an index that is not written yet. Returns
// whether every add went in.
bool MapWriter::grow_service(uint64_t hash, const ServiceParams* params,
                             const std::vector<EndpointAdd>& adds) {
    auto it = state_.services.find(hash);
    if (it == state_.services.end()) return false;  // its creation failed
    MapState::Service svc = it->second;
    if (params) {
        svc.lb_mode = params->lb_mode;
        svc.flags = params->flags;
        svc.affinity_timeout = params->affinity_timeout;
    }
    std::vector<kmesh_endpoint_key> written;
    int err = 0;
    bool skipped = false;
    for (const auto& a : adds) {
        auto b = state_.backends.find(a.backend);
        // Its backend, one of its port overrides or its membership failed to be written: added
        // by a later apply.
        auto member = b == state_.backends.end() ? svc.members.end() : svc.members.find(b->second.id);
        if (b == state_.backends.end() || unported_.count({a.backend, hash}) || member == svc.members.end() ||
            member->second == 0) {
            skipped = true;
            continue;
        }
        auto& slots = svc.slots[a.family][a.prio];
        kmesh_endpoint_key k{svc.id, static_cast<uint16_t>(a.family), static_cast<uint16_t>(a.prio),
                             static_cast<uint32_t>(slots.size() + 1)};
        kmesh_endpoint_value v{b->second.id};
        metrics_.map_writes++;
        if ((err = ops_.update(MapId::kEndpoint, &k, &v))) {
            fail(MapId::kEndpoint, err,
                 fmt::format("write endpoint {}/{}/{}/{}", k.service_id, k.family, k.prio, k.index));
            break;
        }
        slots.push_back(b->second.id);
        written.push_back(k);
    }
    if (!err) {
        MapState::Service before = it->second;
        it->second = svc;
        if (!(err = write_service(hash))) return !skipped;
        it->second = before;
    }
    // Entries past the kernel's count are never picked; remove them to keep capacity.
    for (const auto& k : written) drop_entry(k);
    return false;
}

void MapWriter::put_member(const MemberPut& m) {
    auto s = state_.services.find(m.service);
    auto b = state_.backends.find(m.backend);
    if (s == state_.services.end() || b == state_.backends.end()) return;  // their writes failed
    kmesh_member_key k{s->second.id, b->second.id};
    kmesh_member_value v{m.weight, 0};
    metrics_.map_writes++;
    if (int err = ops_.update(MapId::kMember, &k, &v)) {
        fail(MapId::kMember, err, fmt::format("write member {}/{}", k.service_id, k.backend_id));
        return;
    }
    s->second.members[k.backend_id] = m.weight;
}

// A weight falling to 0 on an existing member: written in removal order, once the backend's slots
// are gone, so a member of weight 0 never has a slot (a drained backend is never picked, and
// whoever reads the weight sees 0 only once that holds).
bool MapWriter::drains(const MemberPut& m) const {
    if (m.weight != 0) return false;
    auto s = state_.services.find(m.service);
    auto b = state_.backends.find(m.backend);
    if (s == state_.services.end() || b == state_.backends.end()) return false;
    auto cur = s->second.members.find(b->second.id);
    return cur != s->second.members.end() && cur->second != 0;
}

// true, or false when the kernel refused (the entry stays).
bool MapWriter::delete_member(uint32_t service_id, uint32_t backend_id) {
    kmesh_member_key k{service_id, backend_id};
    int err = ops_.remove(MapId::kMember, &k);
    if (err && err != -ENOENT) {
        fail(MapId::kMember, err, fmt::format("delete member {}/{}", service_id, backend_id));
        return false;
    }
    return true;
}

void MapWriter::put_frontend(const kmesh_frontend_key& key, const FrontendTarget& target) {
    auto svc = state_.services.find(target.service);
    if (svc == state_.services.end()) return;  // its service failed to be written
    kmesh_frontend_value v{svc->second.id, target.target_port, target.flags};
    metrics_.map_writes++;
    if (int err = ops_.update(MapId::kFrontend, &key, &v)) {
        fail(MapId::kFrontend, err, "write frontend");
        return;
    }
    forget_frontend(key);
    state_.frontends[key] = target;
    state_.frontends_by_service[target.service].insert(key);
}

// Dense delete. Trailing slots just shrink the count; a hole gets the last entry copied into it,
// then the count shrinks, then the old last entry goes. A connect racing with this sees either the
// old or the new count, and every index below it holds a live backend (BPF retries the one window
// where the last entry has just vanished).
void MapWriter::remove_endpoints(uint64_t hash, uint32_t family, uint32_t prio, std::set<uint32_t> indices) {
    auto& svc = state_.services.at(hash);
    auto& slots = svc.slots[family][prio];
    auto fam = static_cast<uint16_t>(family);
    auto pri = static_cast<uint16_t>(prio);
    while (!indices.empty()) {
        auto last = static_cast<uint32_t>(slots.size());
        uint32_t hole = *indices.rbegin();
        if (hole > last) {  // cannot happen for a fresh diff; ignore rather than corrupt
            indices.erase(hole);
            continue;
        }
        if (hole != last) {
            kmesh_endpoint_key k{svc.id, fam, pri, hole};
            kmesh_endpoint_value v{slots.back()};
            metrics_.map_writes++;
            if (int err = ops_.update(MapId::kEndpoint, &k, &v)) {
                fail(MapId::kEndpoint, err,
                     fmt::format("move endpoint {}/{}/{}/{}", svc.id, family, prio, hole));
                return;
            }
            slots[hole - 1] = slots.back();
        }
        uint32_t moved = slots.back();
        slots.pop_back();
        if (write_service(hash)) {
            slots.push_back(moved);  // the kernel still counts `last`, whose entry is intact
            return;
        }
        drop_entry(kmesh_endpoint_key{svc.id, fam, pri, last});
        indices.erase(hole);
    }
}

void MapWriter::delete_service(uint64_t hash) {
    auto it = state_.services.find(hash);
    if (it == state_.services.end()) return;
    auto& svc = it->second;
    int err = ops_.remove(MapId::kService, &svc.id);
    if (err && err != -ENOENT) {
        fail(MapId::kService, err, fmt::format("delete service {}", svc.id));
        return;
    }
    for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
        for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++)
            for (uint32_t idx = 1; idx <= svc.slots[f][p].size(); idx++)
                drop_entry(kmesh_endpoint_key{svc.id, f, p, idx});
    // Members after the slots that name them.
    for (const auto& [bid, weight] : svc.members)
        if (!delete_member(svc.id, bid)) state_.stray_members.push_back(kmesh_member_key{svc.id, bid});
    // The id stays reserved while stray entries of it may remain, so no new service inherits them.
    bool strays = std::any_of(state_.stray_endpoints.begin(), state_.stray_endpoints.end(),
                              [&](const auto& k) { return k.service_id == svc.id; }) ||
                  std::any_of(state_.stray_members.begin(), state_.stray_members.end(),
                              [&](const auto& k) { return k.service_id == svc.id; });
    if (!strays) service_ids_.release(svc.id);
    state_.services.erase(it);
}

// Strays are unreachable (beyond a count, or of a service no frontend uses), so they go first:
// later writes of this apply may reuse their keys.
void MapWriter::delete_strays() {
    auto strays = std::move(state_.stray_endpoints);
    state_.stray_endpoints.clear();
    for (const auto& k : strays) drop_entry(k);
    auto ports = std::move(state_.stray_ports);
    state_.stray_ports.clear();
    for (const auto& k : ports) {
        int err = ops_.remove(MapId::kPort, &k);
        if (err && err != -ENOENT) state_.stray_ports.push_back(k);
    }
    for (const auto& k : std::exchange(state_.stray_members, {})) {
        int err = ops_.remove(MapId::kMember, &k);
        if (err && err != -ENOENT) state_.stray_members.push_back(k);
    }
}

bool MapWriter::port_key(const PortKey& p, kmesh_port_key* out) const {
    auto b = state_.backends.find(p.backend);
    auto s = state_.services.find(p.service);
    if (b == state_.backends.end() || s == state_.services.end()) return false;
    *out = kmesh_port_key{b->second.id, s->second.id, p.port, 0};
    return true;
}

const char* stage_name(Stage s) {
    switch (s) {
        case Stage::kBackends:
            return "backends";
        case Stage::kServices:
            return "services";
        case Stage::kPorts:
            return "ports";
        case Stage::kFrontendFlags:
            return "frontend-flags";
        case Stage::kMembers:
            return "members";
        case Stage::kEndpoints:
            return "endpoints";
        case Stage::kFrontends:
            return "frontends";
    }
    return "?";
}

namespace {

// The size flag of each map, for messages.
const char* size_flag(MapId m) {
    switch (m) {
        case MapId::kFrontend:
            return "--max-frontends";
        case MapId::kService:
            return "--max-services";
        case MapId::kEndpoint:
            return "--max-endpoints";
        case MapId::kBackend:
            return "--max-backends";
        case MapId::kPort:
            return "--max-ports";
        case MapId::kWaypoint:
            return "--max-waypoints";
        case MapId::kWaypointDest:
            return "--max-waypoint-addresses";
        case MapId::kMember:
            return "--max-members";
    }
    return "?";
}

MapCounts capacity_counts(const MapCapacity& c) {
    MapCounts out{};
    out[static_cast<int>(MapId::kFrontend)] = c.frontends;
    out[static_cast<int>(MapId::kService)] = c.services;
    out[static_cast<int>(MapId::kEndpoint)] = c.endpoints;
    out[static_cast<int>(MapId::kBackend)] = c.backends;
    out[static_cast<int>(MapId::kPort)] = c.ports;
    out[static_cast<int>(MapId::kWaypoint)] = c.waypoints;
    out[static_cast<int>(MapId::kWaypointDest)] = c.waypoint_addrs;
    out[static_cast<int>(MapId::kMember)] = c.members;
    return out;
}

// "" or one clause per map whose need exceeds its capacity.
std::string overflow(const MapCounts& need, const MapCapacity& capacity, const char* what) {
    MapCounts cap = capacity_counts(capacity);
    std::string out;
    for (int i = 0; i < kMapCount; i++)
        if (need[i] > cap[i])
            out += fmt::format("{}{} needs {} entries {} but holds {} ({} over; raise {})",
                               out.empty() ? "" : "; ", map_name(static_cast<MapId>(i)), need[i], what,
                               cap[i], need[i] - cap[i], size_flag(static_cast<MapId>(i)));
    return out;
}

size_t endpoint_entries(const MapState::Service& s) {
    size_t n = 0;
    for (const auto& family : s.slots)
        for (const auto& slots : family) n += slots.size();
    return n;
}

}  // namespace

MapCounts entries_needed(const DesiredState& d) {
    MapCounts n{};
    n[static_cast<int>(MapId::kService)] = d.services.size();
    n[static_cast<int>(MapId::kBackend)] = d.backends.size();
    n[static_cast<int>(MapId::kFrontend)] = d.frontends.size();
    n[static_cast<int>(MapId::kPort)] = d.ports.size();
    n[static_cast<int>(MapId::kWaypoint)] = d.waypoints.size();
    n[static_cast<int>(MapId::kWaypointDest)] = d.waypoint_dests.size();
    for (const auto& [h, s] : d.services) {
        n[static_cast<int>(MapId::kMember)] += s.members.size();
        for (const auto& family : s.endpoints)
            for (const auto& prio : family)
                for (const auto& [b, slots] : weight_slots(prio, s.members))
                    n[static_cast<int>(MapId::kEndpoint)] += slots;
    }
    return n;
}

std::string fits(const DesiredState& desired, const MapCapacity& capacity) {
    std::string o = overflow(entries_needed(desired), capacity, "for this config");
    return o.empty() ? o : "the config does not fit the maps: " + o;
}

std::string fits(const DesiredState& desired, const MapSizes& sizes) {
    return fits(desired, MapCapacity::of(sizes));
}

MapCounts MapWriter::entries() const {
    MapCounts n{};
    n[static_cast<int>(MapId::kService)] = state_.services.size();
    n[static_cast<int>(MapId::kBackend)] = state_.backends.size();
    n[static_cast<int>(MapId::kFrontend)] = state_.frontends.size();
    n[static_cast<int>(MapId::kPort)] = state_.ports.size();
    n[static_cast<int>(MapId::kWaypoint)] = state_.waypoints.size();
    n[static_cast<int>(MapId::kWaypointDest)] = state_.waypoint_dests.size();
    for (const auto& [h, s] : state_.services) {
        n[static_cast<int>(MapId::kEndpoint)] += endpoint_entries(s);
        n[static_cast<int>(MapId::kMember)] += s.members.size();
    }
    return n;
}

// What the plan adds and removes per map, against the mirror (strays are deleted first and not
// counted). Refuses a plan whose end result exceeds a map; tells whether the additions fit next
// to everything the plan is about to remove.
std::string MapWriter::check_capacity(const Plan& plan, bool* additions_fit) const {
    MapCounts now = entries(), add{}, del{};
    auto at = [](MapCounts& c, MapId m) -> uint64_t& { return c[static_cast<int>(m)]; };
    for (const auto& [h, b] : plan.put_backends) at(add, MapId::kBackend) += !state_.backends.count(h);
    for (const auto& [h, m] : plan.put_services) at(add, MapId::kService) += !state_.services.count(h);
    at(add, MapId::kEndpoint) = plan.add_endpoints.size();
    for (const auto& [k, t] : plan.put_frontends) at(add, MapId::kFrontend) += !state_.frontends.count(k);
    for (const auto& [k, t] : plan.put_ports) at(add, MapId::kPort) += !state_.ports.count(k);
    for (uint64_t h : plan.delete_backends) at(del, MapId::kBackend) += state_.backends.count(h);
    for (uint64_t h : plan.delete_services) {
        auto it = state_.services.find(h);
        if (it == state_.services.end()) continue;
        at(del, MapId::kService)++;
        at(del, MapId::kEndpoint) += endpoint_entries(it->second);
        at(del, MapId::kMember) += it->second.members.size();
    }
    for (const auto& m : plan.put_members) {
        auto s = state_.services.find(m.service);
        auto b = state_.backends.find(m.backend);
        at(add, MapId::kMember) += s == state_.services.end() || b == state_.backends.end() ||
                                   !s->second.members.count(b->second.id);
    }
    for (const auto& m : plan.delete_members) {
        auto s = state_.services.find(m.service);
        at(del, MapId::kMember) += s != state_.services.end() && s->second.members.count(m.backend_id);
    }
    at(del, MapId::kEndpoint) += plan.remove_endpoints.size();
    for (const auto& k : plan.delete_frontends) at(del, MapId::kFrontend) += state_.frontends.count(k);
    for (const auto& k : plan.delete_ports) at(del, MapId::kPort) += state_.ports.count(k);
    for (const auto& [id, v] : plan.put_waypoints) at(add, MapId::kWaypoint) += !state_.waypoints.count(id);
    for (const auto& [k, v] : plan.put_waypoint_dests)
        at(add, MapId::kWaypointDest) += !state_.waypoint_dests.count(k);
    for (uint64_t id : plan.delete_waypoints) at(del, MapId::kWaypoint) += state_.waypoints.count(id);
    for (const auto& k : plan.delete_waypoint_dests)
        at(del, MapId::kWaypointDest) += state_.waypoint_dests.count(k);

    MapCounts result{}, peak{};
    for (int i = 0; i < kMapCount; i++) {
        result[i] = now[i] + add[i] - std::min(del[i], now[i] + add[i]);
        peak[i] = now[i] + add[i];
    }
    *additions_fit = overflow(peak, capacity_, "").empty();
    std::string o = overflow(result, capacity_, "after this change");
    return o.empty() ? o : "nothing written: " + o;
}

struct MapWriter::Run {
    // Services without any frontend in the maps before this apply (new, or held back before):
    // published only in the last addition stage, and only when all their endpoints went in.
    std::set<uint64_t> unpublished;
    std::set<uint64_t> incomplete;
    bool shrunk = false;      // endpoint removals done: their indices refer to the state before
    bool check_refs = false;  // removals verify nothing published still points at what goes
    bool removals_first = false;
};

namespace {

bool clears_flag(const MapState& st, const kmesh_frontend_key& key, const FrontendTarget& target) {
    auto cur = st.frontends.find(key);
    return cur != st.frontends.end() && cur->second.service == target.service &&
           (cur->second.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS) &&
           !(target.flags & KMESH_FRONTEND_PER_WORKLOAD_PORTS);
}

}  // namespace

void MapWriter::add_stage(Stage stage, const Plan& plan, Run& run) {
    stage_log_.push_back(std::string("+") + stage_name(stage));
    switch (stage) {
        case Stage::kBackends:
            for (const auto& [hash, b] : plan.put_backends) put_backend(hash, b);
            break;
        case Stage::kServices:
            for (const auto& [hash, params] : plan.put_services)
                if (!state_.services.count(hash)) create_service(hash, params);
            break;
        case Stage::kMembers:
            for (const auto& m : plan.put_members)
                if (!drains(m)) put_member(m);
            break;
        case Stage::kPorts:
            for (const auto& [pk, target] : plan.put_ports) {
                kmesh_port_key k;
                if (!port_key(pk, &k)) continue;  // its service or backend failed to be written
                kmesh_port_value v{target, 0};
                metrics_.map_writes++;
                if (int err = ops_.update(MapId::kPort, &k, &v)) {
                    fail(MapId::kPort, err, "write port override");
                    unported_.insert({pk.backend, pk.service});
                    continue;
                }
                state_.ports[pk] = target;
            }
            break;
        case Stage::kFrontendFlags:
            for (const auto& [key, target] : plan.put_frontends)
                if (!run.unpublished.count(target.service) && !clears_flag(state_, key, target))
                    put_frontend(key, target);
            break;
        case Stage::kEndpoints: {
            // plan.put_services and plan.add_endpoints are both ordered by service hash.
            std::map<uint64_t, std::pair<std::optional<ServiceParams>, std::vector<EndpointAdd>>> grow;
            for (const auto& [hash, params] : plan.put_services) grow[hash].first = params;
            for (const auto& a : plan.add_endpoints) grow[a.service].second.push_back(a);
            for (const auto& [hash, g] : grow)
                if (!grow_service(hash, g.first ? &*g.first : nullptr, g.second)) run.incomplete.insert(hash);
            break;
        }
        case Stage::kFrontends: {
            std::set<uint64_t> held;
            for (const auto& [key, target] : plan.put_frontends) {
                if (!run.unpublished.count(target.service)) continue;
                if (run.incomplete.count(target.service) || !state_.services.count(target.service)) {
                    held.insert(target.service);
                    continue;
                }
                put_frontend(key, target);
            }
            for (uint64_t hash : held) {
                metrics_.services_unpublished++;
                std::string msg = fmt::format(
                    "service {:016x} not published: it could not be written completely, so its VIPs "
                    "pass through untouched until a retry succeeds",
                    hash);
                spdlog::warn("{}", msg);
                errors_.push_back(msg);
            }
            break;
        }
    }
}

void MapWriter::remove_stage(Stage stage, const Plan& plan, Run& run) {
    stage_log_.push_back(std::string("-") + stage_name(stage));
    // Never delete what a frontend or endpoint still points at. The plan never does when executed
    // in stage order, unless one of its removals failed or removals run first (a VIP moving to a
    // new service keeps its old one alive until then), so the (mesh-sized) reference sets are built
    // only then.
    bool check_refs = run.check_refs || !errors_.empty() || !state_.stray_backends.empty();
    switch (stage) {
        case Stage::kFrontends:
            // Making room first, a VIP moving from a service being deleted to one being created
            // would pin the old service (its frontend still points at it) while the new one has
            // no room: unpublish the VIP for the moment instead; the new service publishes it.
            if (run.removals_first && !run.shrunk)
                for (const auto& [key, target] : plan.put_frontends) {
                    auto cur = state_.frontends.find(key);
                    if (cur == state_.frontends.end() || cur->second.service == target.service ||
                        std::find(plan.delete_services.begin(), plan.delete_services.end(),
                                  cur->second.service) == plan.delete_services.end())
                        continue;
                    int err = ops_.remove(MapId::kFrontend, &key);
                    if (err && err != -ENOENT) {
                        fail(MapId::kFrontend, err, "delete frontend");
                        continue;
                    }
                    forget_frontend(key);
                    run.unpublished.insert(target.service);
                }
            for (const auto& key : plan.delete_frontends) {
                if (!state_.frontends.count(key)) continue;
                int err = ops_.remove(MapId::kFrontend, &key);
                if (err && err != -ENOENT) {
                    fail(MapId::kFrontend, err, "delete frontend");
                    continue;
                }
                forget_frontend(key);
            }
            break;
        case Stage::kEndpoints: {
            if (run.shrunk) break;
            run.shrunk = true;
            std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::set<uint32_t>> shrink;
            for (const auto& r : plan.remove_endpoints) shrink[{r.service, r.family, r.prio}].insert(r.index);
            for (auto& [sfp, indices] : shrink)
                if (state_.services.count(std::get<0>(sfp)))
                    remove_endpoints(std::get<0>(sfp), std::get<1>(sfp), std::get<2>(sfp),
                                     std::move(indices));
            break;
        }
        case Stage::kMembers: {
            // After the endpoint removals: a member whose slot is still counted (its removal
            // failed) stays, and keeps its weight, until a retry removes the slot.
            auto slotted = [](const MapState::Service& s, uint32_t backend_id) {
                for (const auto& family : s.slots)
                    for (const auto& prio : family)
                        if (std::find(prio.begin(), prio.end(), backend_id) != prio.end()) return true;
                return false;
            };
            for (const auto& m : plan.put_members) {
                if (!drains(m)) continue;
                auto s = state_.services.find(m.service);
                auto b = state_.backends.find(m.backend);
                if (s != state_.services.end() && b != state_.backends.end() &&
                    !slotted(s->second, b->second.id))
                    put_member(m);
            }
            for (const auto& m : plan.delete_members) {
                auto it = state_.services.find(m.service);
                if (it == state_.services.end() || !it->second.members.count(m.backend_id)) continue;
                if (slotted(it->second, m.backend_id) || !delete_member(it->second.id, m.backend_id))
                    continue;
                it->second.members.erase(m.backend_id);
            }
            break;
        }
        case Stage::kFrontendFlags:
            // Only once every endpoint that needed an override is uncounted: after a failure the
            // flag stays until a retry.
            if (!errors_.empty()) break;
            for (const auto& [key, target] : plan.put_frontends)
                if (!run.unpublished.count(target.service) && clears_flag(state_, key, target))
                    put_frontend(key, target);
            break;
        case Stage::kPorts:
            // A removed override makes BPF fall back to the frontend's port, which is then right.
            for (const auto& pk : plan.delete_ports) {
                if (!state_.ports.count(pk)) continue;
                kmesh_port_key k;
                if (!port_key(pk, &k)) {
                    state_.ports.erase(pk);
                    continue;
                }
                if (!errors_.empty()) {  // keep it while its endpoint is still counted
                    const auto& slots = state_.services.at(pk.service).slots;
                    bool counted = false;
                    for (const auto& family : slots)
                        for (const auto& prio : family)
                            counted |= std::find(prio.begin(), prio.end(), k.backend_id) != prio.end();
                    if (counted) continue;
                }
                int err = ops_.remove(MapId::kPort, &k);
                if (err && err != -ENOENT) {
                    fail(MapId::kPort, err, "delete port override");
                    // Its service or backend id may be released below: keep the raw key, not the names.
                    state_.stray_ports.push_back(k);
                }
                state_.ports.erase(pk);
            }
            break;
        case Stage::kServices: {
            std::set<uint64_t> referenced;
            if (check_refs)
                for (const auto& [k, t] : state_.frontends) referenced.insert(t.service);
            for (uint64_t hash : plan.delete_services)
                if (!referenced.count(hash)) delete_service(hash);
            for (uint32_t id : std::exchange(state_.stray_services, {})) {
                int err = ops_.remove(MapId::kService, &id);
                if (err && err != -ENOENT) state_.stray_services.push_back(id);
            }
            break;
        }
        case Stage::kBackends: {
            std::set<uint32_t> referenced;
            if (check_refs)
                for (const auto& [h, s] : state_.services) {
                    for (const auto& family : s.slots)
                        for (const auto& slots : family) referenced.insert(slots.begin(), slots.end());
                    // A member entry names the id too: never let a new backend inherit it.
                    for (const auto& [bid, weight] : s.members) referenced.insert(bid);
                }
            // Members a failed delete left behind (of services already gone) until strays go.
            if (check_refs)
                for (const auto& k : state_.stray_members) referenced.insert(k.backend_id);
            for (uint64_t hash : plan.delete_backends) {
                auto it = state_.backends.find(hash);
                if (it == state_.backends.end() || referenced.count(it->second.id)) continue;
                int err = ops_.remove(MapId::kBackend, &it->second.id);
                if (err && err != -ENOENT) {
                    fail(MapId::kBackend, err, "delete backend");
                    continue;
                }
                backend_ids_.release(it->second.id);
                state_.backend_hash_by_id.erase(it->second.id);
                state_.backends.erase(it);
            }
            for (uint32_t id : std::exchange(state_.stray_backends, {})) {
                if (referenced.count(id)) {
                    state_.stray_backends.push_back(id);
                    continue;
                }
                int err = ops_.remove(MapId::kBackend, &id);
                if (err && err != -ENOENT) state_.stray_backends.push_back(id);
            }
            break;
        }
    }
}

void MapWriter::put_waypoints(const Plan& plan) {
    if (plan.put_waypoints.empty()) return;
    stage_log_.push_back("+waypoints");
    for (const auto& [id, v] : plan.put_waypoints) {
        metrics_.map_writes++;
        if (int err = ops_.update(MapId::kWaypoint, &id, &v)) {
            fail(MapId::kWaypoint, err, fmt::format("write waypoint {:016x}", id));
            continue;
        }
        state_.waypoints[id] = v;
    }
}

void MapWriter::put_waypoint_dests(const Plan& plan) {
    if (plan.put_waypoint_dests.empty()) return;
    stage_log_.push_back("+waypoint-addresses");
    for (const auto& [k, v] : plan.put_waypoint_dests) {
        // Never point at a waypoint that is not written (its write failed): a retry will.
        if (!state_.waypoints.count(v.waypoint_id)) continue;
        metrics_.map_writes++;
        if (int err = ops_.update(MapId::kWaypointDest, &k, &v)) {
            fail(MapId::kWaypointDest, err, "write waypoint address");
            continue;
        }
        state_.waypoint_dests[k] = v;
    }
}

void MapWriter::delete_waypoint_dests(const Plan& plan) {
    if (plan.delete_waypoint_dests.empty()) return;
    stage_log_.push_back("-waypoint-addresses");
    for (const auto& k : plan.delete_waypoint_dests) {
        if (!state_.waypoint_dests.count(k)) continue;
        int err = ops_.remove(MapId::kWaypointDest, &k);
        if (err && err != -ENOENT) {
            fail(MapId::kWaypointDest, err, "delete waypoint address");
            continue;
        }
        state_.waypoint_dests.erase(k);
    }
}

void MapWriter::delete_waypoints(const Plan& plan) {
    if (plan.delete_waypoints.empty()) return;
    stage_log_.push_back("-waypoints");
    std::set<uint64_t> referenced;
    for (const auto& [k, v] : state_.waypoint_dests) referenced.insert(v.waypoint_id);
    for (uint64_t id : plan.delete_waypoints) {
        if (!state_.waypoints.count(id) || referenced.count(id)) continue;
        int err = ops_.remove(MapId::kWaypoint, &id);
        if (err && err != -ENOENT) {
            fail(MapId::kWaypoint, err, fmt::format("delete waypoint {:016x}", id));
            continue;
        }
        state_.waypoints.erase(id);
    }
}

std::string MapWriter::apply(const Plan& plan) {
    errors_.clear();
    unported_.clear();
    stage_log_.clear();
    bool additions_fit = true;
    if (auto e = check_capacity(plan, &additions_fit); !e.empty()) {
        spdlog::warn("{}", e);
        return e;
    }
    delete_strays();

    Run run;
    for (const auto& [key, target] : plan.put_frontends)
        if (!state_.frontends_by_service.count(target.service)) run.unpublished.insert(target.service);

    if (additions_fit) {
        put_waypoints(plan);
        for (Stage s : kStageOrder) add_stage(s, plan, run);
        put_waypoint_dests(plan);
        delete_waypoint_dests(plan);
        for (auto s = kStageOrder.rbegin(); s != kStageOrder.rend(); ++s) remove_stage(*s, plan, run);
        delete_waypoints(plan);
    } else {
        delete_waypoint_dests(plan);
        delete_waypoints(plan);
        // The maps cannot hold the additions next to what this plan removes: make room first.
        // Whatever a published frontend still needs (a VIP moving to a service created below)
        // survives this pass and goes in the second one.
        run.removals_first = run.check_refs = true;
        for (auto s = kStageOrder.rbegin(); s != kStageOrder.rend(); ++s) remove_stage(*s, plan, run);
        put_waypoints(plan);
        for (Stage s : kStageOrder) add_stage(s, plan, run);
        put_waypoint_dests(plan);
        for (auto s = kStageOrder.rbegin(); s != kStageOrder.rend(); ++s) remove_stage(*s, plan, run);
    }

    if (errors_.empty()) return {};
    std::string out;
    for (size_t i = 0; i < errors_.size() && i < 3; i++) out += (i ? "; " : "") + errors_[i];
    if (errors_.size() > 3) out += fmt::format(" (and {} more)", errors_.size() - 3);
    return out;
}

}  // namespace kmesh
