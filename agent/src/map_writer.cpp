#include "agent/src/map_writer.hpp"

#include <fmt/format.h>

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
        for (int p = 0; p < KMESH_PRIO_COUNT; p++) s.slots[p].assign(sv.endpoint_count[p], 0);
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
        if (sh == service_hash_by_id.end() || ek.prio >= KMESH_PRIO_COUNT || ek.index == 0 ||
            ek.index > st.services[sh->second].slots[ek.prio].size()) {
            st.stray_endpoints.push_back(ek);
            return true;
        }
        st.services[sh->second].slots[ek.prio][ek.index - 1] = ev.backend_id;
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
    for (int p = 0; p < KMESH_PRIO_COUNT; p++) v.endpoint_count[p] = static_cast<uint32_t>(s.slots[p].size());
    v.lb_mode = s.lb_mode;
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
void MapWriter::create_service(uint64_t hash, uint32_t lb_mode) {
    MapState::Service svc;
    if (!(svc.id = service_ids_.allocate())) {
        fail(MapId::kService, -E2BIG, "allocate id");
        return;
    }
    svc.lb_mode = lb_mode;
    state_.services[hash] = svc;
    if (write_service(hash)) {
        state_.services.erase(hash);
        service_ids_.release(svc.id);
    }
}

// Grows one service: endpoint entries past the current counts first, then the counts (and LB
// mode) in a single service write, so no connect picks an index that is not written yet.
void MapWriter::grow_service(uint64_t hash, const uint32_t* lb_mode, const std::vector<EndpointAdd>& adds) {
    auto it = state_.services.find(hash);
    if (it == state_.services.end()) return;  // its creation failed
    MapState::Service svc = it->second;
    if (lb_mode) svc.lb_mode = *lb_mode;
    std::vector<kmesh_endpoint_key> written;
    int err = 0;
    for (const auto& a : adds) {
        auto b = state_.backends.find(a.backend);
        // Its backend or one of its port overrides failed to be written: added by a later apply.
        if (b == state_.backends.end() || unported_.count({a.backend, hash})) continue;
        kmesh_endpoint_key k{svc.id, a.prio, static_cast<uint32_t>(svc.slots[a.prio].size() + 1)};
        kmesh_endpoint_value v{b->second.id};
        metrics_.map_writes++;
        if ((err = ops_.update(MapId::kEndpoint, &k, &v))) {
            fail(MapId::kEndpoint, err,
                 fmt::format("write endpoint {}/{}/{}", k.service_id, k.prio, k.index));
            break;
        }
        svc.slots[a.prio].push_back(b->second.id);
        written.push_back(k);
    }
    if (!err) {
        MapState::Service before = it->second;
        it->second = svc;
        if (!(err = write_service(hash))) return;
        it->second = before;
    }
    // Entries past the kernel's count are never picked; remove them to keep capacity.
    for (const auto& k : written) drop_entry(k);
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
void MapWriter::remove_endpoints(uint64_t hash, uint32_t prio, std::set<uint32_t> indices) {
    auto& svc = state_.services.at(hash);
    auto& slots = svc.slots[prio];
    while (!indices.empty()) {
        auto last = static_cast<uint32_t>(slots.size());
        uint32_t hole = *indices.rbegin();
        if (hole > last) {  // cannot happen for a fresh diff; ignore rather than corrupt
            indices.erase(hole);
            continue;
        }
        if (hole != last) {
            kmesh_endpoint_key k{svc.id, prio, hole};
            kmesh_endpoint_value v{slots.back()};
            metrics_.map_writes++;
            if (int err = ops_.update(MapId::kEndpoint, &k, &v)) {
                fail(MapId::kEndpoint, err, fmt::format("move endpoint {}/{}/{}", svc.id, prio, hole));
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
        drop_entry(kmesh_endpoint_key{svc.id, prio, last});
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
    for (uint32_t p = 0; p < KMESH_PRIO_COUNT; p++)
        for (uint32_t idx = 1; idx <= svc.slots[p].size(); idx++)
            drop_entry(kmesh_endpoint_key{svc.id, p, idx});
    // The id stays reserved while stray entries of it may remain, so no new service inherits them.
    bool strays = std::any_of(state_.stray_endpoints.begin(), state_.stray_endpoints.end(),
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
}

bool MapWriter::port_key(const PortKey& p, kmesh_port_key* out) const {
    auto b = state_.backends.find(p.backend);
    auto s = state_.services.find(p.service);
    if (b == state_.backends.end() || s == state_.services.end()) return false;
    *out = kmesh_port_key{b->second.id, s->second.id, p.port, 0};
    return true;
}

std::string MapWriter::apply(const Plan& plan) {
    errors_.clear();
    unported_.clear();
    delete_strays();

    for (const auto& [hash, b] : plan.put_backends) put_backend(hash, b);

    std::set<uint64_t> fresh;
    for (const auto& [hash, mode] : plan.put_services)
        if (!state_.services.count(hash)) {
            create_service(hash, mode);
            fresh.insert(hash);
        }

    // Port overrides before the endpoints and frontends that use them (make-before-break).
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

    // Existing services' frontends first: a frontend that now announces per-workload ports must
    // do so before an endpoint relying on it is counted. New services' frontends come last,
    // once their endpoints exist.
    for (const auto& [key, target] : plan.put_frontends)
        if (!fresh.count(target.service)) put_frontend(key, target);

    // plan.put_services and plan.add_endpoints are both ordered by service hash.
    std::map<uint64_t, std::pair<std::optional<uint32_t>, std::vector<EndpointAdd>>> grow;
    for (const auto& [hash, mode] : plan.put_services) grow[hash].first = mode;
    for (const auto& a : plan.add_endpoints) grow[a.service].second.push_back(a);
    for (const auto& [hash, g] : grow) grow_service(hash, g.first ? &*g.first : nullptr, g.second);

    for (const auto& [key, target] : plan.put_frontends)
        if (fresh.count(target.service)) put_frontend(key, target);
    for (const auto& key : plan.delete_frontends) {
        int err = ops_.remove(MapId::kFrontend, &key);
        if (err && err != -ENOENT) {
            fail(MapId::kFrontend, err, "delete frontend");
            continue;
        }
        forget_frontend(key);
    }

    std::map<std::pair<uint64_t, uint32_t>, std::set<uint32_t>> shrink;
    for (const auto& r : plan.remove_endpoints) shrink[{r.service, r.prio}].insert(r.index);
    for (auto& [sp, indices] : shrink)
        if (state_.services.count(sp.first)) remove_endpoints(sp.first, sp.second, std::move(indices));

    // A removed override makes BPF fall back to the frontend's port, which is then the right one.
    for (const auto& pk : plan.delete_ports) {
        kmesh_port_key k;
        if (!port_key(pk, &k)) {
            state_.ports.erase(pk);
            continue;
        }
        int err = ops_.remove(MapId::kPort, &k);
        if (err && err != -ENOENT) {
            fail(MapId::kPort, err, "delete port override");
            // Its service or backend id may be released below: keep the raw key, not the names.
            state_.stray_ports.push_back(k);
        }
        state_.ports.erase(pk);
    }

    // Never delete what a frontend or endpoint still points at. The plan never does, unless one
    // of its removals failed above, so the (mesh-sized) reference sets are built only then.
    bool check_refs = !errors_.empty() || !state_.stray_backends.empty();
    std::set<uint64_t> referenced_services;
    if (check_refs)
        for (const auto& [k, t] : state_.frontends) referenced_services.insert(t.service);
    for (uint64_t hash : plan.delete_services)
        if (!referenced_services.count(hash)) delete_service(hash);
    for (uint32_t id : std::exchange(state_.stray_services, {})) {
        int err = ops_.remove(MapId::kService, &id);
        if (err && err != -ENOENT) state_.stray_services.push_back(id);
    }

    std::set<uint32_t> referenced_backends;
    if (check_refs)
        for (const auto& [h, s] : state_.services)
            for (const auto& slots : s.slots) referenced_backends.insert(slots.begin(), slots.end());
    for (uint64_t hash : plan.delete_backends) {
        auto it = state_.backends.find(hash);
        if (it == state_.backends.end() || referenced_backends.count(it->second.id)) continue;
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
        if (referenced_backends.count(id)) {
            state_.stray_backends.push_back(id);
            continue;
        }
        int err = ops_.remove(MapId::kBackend, &id);
        if (err && err != -ENOENT) state_.stray_backends.push_back(id);
    }

    if (errors_.empty()) return {};
    std::string out = errors_.front();
    if (errors_.size() > 1) out += fmt::format(" (and {} more)", errors_.size() - 1);
    return out;
}

}  // namespace kmesh
