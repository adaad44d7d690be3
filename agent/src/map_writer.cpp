#include "agent/src/map_writer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kmesh {

uint32_t IdAllocator::allocate() {
    if (used_.size() >= max_) return 0;
    uint32_t id = hint_;
    while (used_.count(id)) id = id % max_ + 1;
    used_.insert(id);
    hint_ = id % max_ + 1;
    return id;
}

MapState recover_map_state(const MapOps& ops) {
    MapState st;
    std::map<uint32_t, uint64_t> service_hash_by_id;
    ops.for_each(MapId::kService, [&](const void* k, const void* v) {
        uint32_t id;
        kmesh_service_value sv;
        std::memcpy(&id, k, sizeof id);
        std::memcpy(&sv, v, sizeof sv);
        auto& s = st.services[sv.name_hash];
        s.id = id;
        s.lb_mode = sv.lb_mode;
        for (int p = 0; p < KMESH_PRIO_COUNT; p++) s.slots[p].assign(sv.endpoint_count[p], 0);
        service_hash_by_id[id] = sv.name_hash;
        return true;
    });
    ops.for_each(MapId::kBackend, [&](const void* k, const void* v) {
        uint32_t id;
        kmesh_backend_value bv;
        std::memcpy(&id, k, sizeof id);
        std::memcpy(&bv, v, sizeof bv);
        auto& b = st.backends[bv.name_hash];
        b.id = id;
        std::memcpy(b.value.addr4.data(), bv.addr4, 16);
        std::memcpy(b.value.addr6.data(), bv.addr6, 16);
        b.value.flags = bv.flags;
        st.backend_hash_by_id[id] = bv.name_hash;
        return true;
    });
    ops.for_each(MapId::kEndpoint, [&](const void* k, const void* v) {
        kmesh_endpoint_key ek;
        kmesh_endpoint_value ev;
        std::memcpy(&ek, k, sizeof ek);
        std::memcpy(&ev, v, sizeof ev);
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
        kmesh_frontend_key fk;
        kmesh_frontend_value fv;
        std::memcpy(&fk, k, sizeof fk);
        std::memcpy(&fv, v, sizeof fv);
        auto sh = service_hash_by_id.find(fv.service_id);
        // A frontend of an unknown service id maps to hash 0, which no desired service has.
        st.frontends[fk] = FrontendTarget{sh == service_hash_by_id.end() ? 0 : sh->second, fv.target_port};
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
}

int MapWriter::fail(MapId map, int err, const std::string& what) {
    auto m = static_cast<int>(map);
    metrics_.map_write_errors[m]++;
    // A full hash map answers E2BIG on insert; ENOSPC/ENOMEM are kernel allocation failures.
    bool full = err == -E2BIG || err == -ENOSPC || err == -ENOMEM;
    if (full) metrics_.map_full_errors[m]++;
    error_ = fmt::format("{} {}: {}{}", map_name(map), what, std::strerror(-err),
                         full ? " (map full: raise its size flag)" : "");
    return err;
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

int MapWriter::put_backend(uint64_t hash, const DesiredBackend& b) {
    auto it = state_.backends.find(hash);
    uint32_t id = it != state_.backends.end() ? it->second.id : backend_ids_.allocate();
    if (!id) return fail(MapId::kBackend, -E2BIG, "allocate id");
    kmesh_backend_value v{};
    std::memcpy(v.addr4, b.addr4.data(), 16);
    std::memcpy(v.addr6, b.addr6.data(), 16);
    v.flags = b.flags;
    v.name_hash = hash;
    metrics_.map_writes++;
    if (int err = ops_.update(MapId::kBackend, &id, &v)) {
        if (it == state_.backends.end()) backend_ids_.release(id);
        return fail(MapId::kBackend, err, fmt::format("write backend {}", id));
    }
    state_.backends[hash] = {id, b};
    state_.backend_hash_by_id[id] = hash;
    return 0;
}

// Writes the run of additions for one service starting at plan.add_endpoints[i]: entries past
// the current counts first, then the counts in one service write, so no connect picks an index
// that is not written yet.
int MapWriter::add_endpoints(const Plan& plan, size_t& i) {
    uint64_t hash = plan.add_endpoints[i].service;
    auto& svc = state_.services.at(hash);
    std::vector<kmesh_endpoint_key> written;
    auto pending = svc.slots;
    int err = 0;
    for (; i < plan.add_endpoints.size() && plan.add_endpoints[i].service == hash; i++) {
        const auto& c = plan.add_endpoints[i];
        if (err) continue;  // skip the rest of this service's run
        auto b = state_.backends.find(c.backend_hash);
        if (b == state_.backends.end()) continue;  // its backend write failed earlier
        auto& slots = pending[c.prio];
        kmesh_endpoint_key k{svc.id, c.prio, static_cast<uint32_t>(slots.size() + 1)};
        kmesh_endpoint_value v{b->second.id};
        metrics_.map_writes++;
        if ((err = ops_.update(MapId::kEndpoint, &k, &v))) {
            fail(MapId::kEndpoint, err,
                 fmt::format("write endpoint {}/{}/{}", k.service_id, k.prio, k.index));
            break;
        }
        slots.push_back(b->second.id);
        written.push_back(k);
    }
    while (i < plan.add_endpoints.size() && plan.add_endpoints[i].service == hash) i++;
    if (!err) {
        auto before = svc.slots;
        svc.slots = pending;
        if (!(err = write_service(hash))) return 0;
        svc.slots = before;
    }
    // Entries past the count are never picked; removing them keeps the maps tidy.
    for (const auto& k : written) ops_.remove(MapId::kEndpoint, &k);
    return err;
}

// Dense delete: the last entry is copied into the hole, then the count shrinks, then the old last
// entry goes. A connect racing with this sees either the old or the new count and every index
// below it holds a live backend (BPF retries the one window where the last entry just vanished).
int MapWriter::remove_endpoint(const EndpointChange& c) {
    auto& svc = state_.services.at(c.service);
    auto& slots = svc.slots[c.prio];
    auto pos = std::find(slots.begin(), slots.end(), c.backend_id);
    if (pos == slots.end()) return 0;
    auto hole = static_cast<uint32_t>(pos - slots.begin()) + 1;
    auto last = static_cast<uint32_t>(slots.size());
    int err;
    if (hole != last) {
        kmesh_endpoint_key k{svc.id, c.prio, hole};
        kmesh_endpoint_value v{slots.back()};
        metrics_.map_writes++;
        if ((err = ops_.update(MapId::kEndpoint, &k, &v)))
            return fail(MapId::kEndpoint, err, fmt::format("move endpoint {}/{}/{}", svc.id, c.prio, hole));
        *pos = slots.back();
    }
    slots.pop_back();
    if ((err = write_service(c.service))) {
        slots.push_back(hole != last ? *pos : c.backend_id);  // the kernel still counts `last`
        return err;
    }
    kmesh_endpoint_key k{svc.id, c.prio, last};
    ops_.remove(MapId::kEndpoint, &k);  // beyond the count now: a failure here leaves a harmless stray
    return 0;
}

int MapWriter::remove_service(uint64_t hash) {
    auto it = state_.services.find(hash);
    if (it == state_.services.end()) return 0;
    auto& svc = it->second;
    int err = ops_.remove(MapId::kService, &svc.id);
    if (err && err != -ENOENT) return fail(MapId::kService, err, fmt::format("delete service {}", svc.id));
    for (uint32_t p = 0; p < KMESH_PRIO_COUNT; p++)
        for (uint32_t idx = 1; idx <= svc.slots[p].size(); idx++) {
            kmesh_endpoint_key k{svc.id, p, idx};
            ops_.remove(MapId::kEndpoint, &k);
        }
    service_ids_.release(svc.id);
    state_.services.erase(it);
    return 0;
}

std::string MapWriter::apply(const Plan& plan) {
    error_.clear();
    auto done = [&](int err) { return err ? error_ : std::string(); };

    for (const auto& [hash, b] : plan.put_backends)
        if (int err = put_backend(hash, b)) return done(err);

    for (const auto& [hash, lb_mode] : plan.put_services) {
        auto it = state_.services.find(hash);
        if (it == state_.services.end()) {
            uint32_t id = service_ids_.allocate();
            if (!id) return done(fail(MapId::kService, -E2BIG, "allocate id"));
            it = state_.services.emplace(hash, MapState::Service{id, lb_mode, {}}).first;
            if (int err = write_service(hash)) {
                service_ids_.release(id);
                state_.services.erase(it);
                return done(err);
            }
        } else {
            it->second.lb_mode = lb_mode;
            if (int err = write_service(hash)) return done(err);
        }
    }

    for (size_t i = 0; i < plan.add_endpoints.size();)
        if (int err = add_endpoints(plan, i)) return done(err);

    for (const auto& [key, target] : plan.put_frontends) {
        auto svc = state_.services.find(target.service);
        if (svc == state_.services.end()) continue;  // its service failed to be written
        kmesh_frontend_value v{svc->second.id, target.target_port, 0};
        metrics_.map_writes++;
        if (int err = ops_.update(MapId::kFrontend, &key, &v))
            return done(fail(MapId::kFrontend, err, "write frontend"));
        state_.frontends[key] = target;
    }
    for (const auto& key : plan.delete_frontends) {
        int err = ops_.remove(MapId::kFrontend, &key);
        if (err && err != -ENOENT) return done(fail(MapId::kFrontend, err, "delete frontend"));
        state_.frontends.erase(key);
    }

    for (const auto& c : plan.delete_endpoints)
        if (int err = remove_endpoint(c)) return done(err);

    for (uint64_t hash : plan.delete_services)
        if (int err = remove_service(hash)) return done(err);

    for (uint64_t hash : plan.delete_backends) {
        auto it = state_.backends.find(hash);
        if (it == state_.backends.end()) continue;
        int err = ops_.remove(MapId::kBackend, &it->second.id);
        if (err && err != -ENOENT) return done(fail(MapId::kBackend, err, "delete backend"));
        backend_ids_.release(it->second.id);
        state_.backend_hash_by_id.erase(it->second.id);
        state_.backends.erase(it);
    }

    for (const auto& k : state_.stray_endpoints) ops_.remove(MapId::kEndpoint, &k);
    state_.stray_endpoints.clear();
    return {};
}

}  // namespace kmesh
