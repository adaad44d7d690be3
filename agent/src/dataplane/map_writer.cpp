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
    if (count_ >= max_) return 0;
    uint32_t id = hint_;
    while (used(id)) id = id % max_ + 1;
    mark_used(id);
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
        s.max_connections = sv.max_connections;
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
        b.value.port = bv.port;
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
    // Splits: by name hash, like services; one naming a service id that is not there is a stray.
    std::map<uint32_t, uint64_t> split_hash_by_id;
    ops.for_each(MapId::kSplit, [&](const void* k, const void* v) {
        auto id = read_as<uint32_t>(k);
        auto sv = read_as<kmesh_split_value>(v);
        MapState::Split sp{id, {}};
        bool ok = sv.count >= 1 && sv.count <= KMESH_SPLIT_MAX && !st.splits.count(sv.name_hash);
        for (uint32_t i = 0; ok && i < sv.count; i++) {
            auto sh = service_hash_by_id.find(sv.service_id[i]);
            uint32_t prev = i ? sv.cum_weight[i - 1] : 0;
            ok = sh != service_hash_by_id.end() && sv.cum_weight[i] > prev;
            if (ok) sp.value.services.emplace_back(sh->second, sv.cum_weight[i] - prev);
        }
        if (!ok) {
            st.stray_splits.push_back(id);
            return true;
        }
        st.splits[sv.name_hash] = std::move(sp);
        split_hash_by_id[id] = sv.name_hash;
        return true;
    });
    // Limits: an ARRAY, every index present; those never written (or zeroed) hold zeros.
    std::map<uint32_t, uint64_t> limit_hash_by_id;
    ops.for_each(MapId::kLimitCfg, [&](const void* k, const void* v) {
        auto id = read_as<uint32_t>(k);
        auto lv = read_as<kmesh_limit_cfg>(v);
        if (id == 0 || (lv.name_hash == 0 && lv.max_tokens == 0)) return true;
        if (st.limits.count(lv.name_hash)) {
            st.stray_limits.push_back(id);
            return true;
        }
        st.limits[lv.name_hash] = {id, {lv.max_tokens, lv.tokens_per_fill, lv.fill_interval_ns}};
        limit_hash_by_id[id] = lv.name_hash;
        return true;
    });
    std::set<uint64_t> limits_named;
    ops.for_each(MapId::kFrontend, [&](const void* k, const void* v) {
        auto fk = read_as<kmesh_frontend_key>(k);
        auto fv = read_as<kmesh_frontend_value>(v);
        // Hash 0 (nothing desired has it) makes the next diff rewrite or delete the entry.
        uint64_t target = 0;
        if (fv.flags & KMESH_FRONTEND_SPLIT) {
            auto sh = split_hash_by_id.find(fv.service_id);
            if (sh != split_hash_by_id.end()) target = sh->second;
        } else {
            st.reserved_service_ids.insert(fv.service_id);
            auto sh = service_hash_by_id.find(fv.service_id);
            if (sh != service_hash_by_id.end()) target = sh->second;
        }
        uint64_t limit = 0;
        if (fv.flags & KMESH_FRONTEND_LIMITED) {
            auto lh = limit_hash_by_id.find(fv.limit_id);
            if (lh != limit_hash_by_id.end()) limits_named.insert(limit = lh->second);
        }
        FrontendTarget t{target, fv.target_port, fv.flags, limit};
        st.frontends[fk] = t;
        st.frontends_by_service[t.service].insert(fk);
        return true;
    });
    // A limit no frontend names is left over (a crash between the frontends and its clearing).
    for (auto it = st.limits.begin(); it != st.limits.end();)
        if (!limits_named.count(it->first)) {
            st.stray_limits.push_back(it->second.id);
            it = st.limits.erase(it);
        } else {
            ++it;
        }
    ops.for_each(MapId::kRateLimit, [&](const void* k, const void*) {
        auto key = read_as<kmesh_ratelimit_key>(k);
        auto lh = limit_hash_by_id.find(key.limit_id);
        if (lh == limit_hash_by_id.end() || !st.limits.count(lh->second)) st.stray_buckets.push_back(key);
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
      backend_ids_(capacity.backends),
      split_ids_(capacity.splits),
      limit_ids_(capacity.limits) {
    for (const auto& [h, s] : state_.splits) split_ids_.mark_used(s.id);
    for (uint32_t id : state_.stray_splits) split_ids_.mark_used(id);
    for (const auto& [h, l] : state_.limits) limit_ids_.mark_used(l.id);
    for (uint32_t id : state_.stray_limits) limit_ids_.mark_used(id);
    for (const auto& [h, s] : state_.services) service_ids_.mark_used(s.id);
    for (const auto& [h, b] : state_.backends) backend_ids_.mark_used(b.id);
    for (uint32_t id : state_.reserved_service_ids) service_ids_.mark_used(id);
    for (uint32_t id : state_.reserved_backend_ids) backend_ids_.mark_used(id);
}

struct MapWriter::Run {
    // Services without any frontend in the maps before this apply (new, or held back before):
    // published only in the last addition stage, and only when all their endpoints went in.
    std::set<uint64_t> unpublished;
    std::set<uint64_t> incomplete;
    bool shrunk = false;      // endpoint removals done: their indices refer to the state before
    bool check_refs = false;  // removals verify nothing published still points at what goes
    bool removals_first = false;
    // Backends that lose an address family: written with both the old and the new families in
    // the addition stage (their slots in the dropped family are still counted), narrowed to the
    // new value once those slots are gone (removal, kBackends).
    std::vector<std::pair<uint64_t, DesiredBackend>> narrowed;
};

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

// One kernel call per batch: the kernel writes the entries in the order given, exactly as one call
// each would, so batching changes how many syscalls a stage takes, never what a connect() can see
// between two entries. A batch the kernel stops early (an entry failed: `done` says how many went
// in before it) is resumed after the failed entry, which gets its error: the results are those of
// one call per entry. A map the kernel has no batch operation for goes one entry per call.
std::vector<int> MapWriter::put_all(MapId map, const void* keys, const void* values, size_t n) {
    std::vector<int> errs(n, 0);
    const auto* k = static_cast<const uint8_t*>(keys);
    const auto* v = static_cast<const uint8_t*>(values);
    const size_t ks = map_key_size(map), vs = map_value_size(map);
    const int m = static_cast<int>(map);
    metrics_.map_writes += n;
    for (size_t off = 0; off < n;) {
        if (no_batch_[m] || n - off == 1) {
            metrics_.map_calls++;
            errs[off] = ops_.update(map, k + off * ks, v + off * vs);
            off++;
            continue;
        }
        auto chunk = static_cast<uint32_t>(std::min<size_t>(n - off, kMaxBatch));
        uint32_t done = 0;
        metrics_.map_calls++;
        int err = ops_.update_batch(map, k + off * ks, v + off * vs, chunk, &done);
        if (err == -EOPNOTSUPP && done == 0) {
            no_batch_[m] = true;
            spdlog::info("{}: the kernel has no batch update for this map; writing one entry per call",
                         map_name(map));
            continue;
        }
        if (!err) {
            off += chunk;
            continue;
        }
        metrics_.map_batches_stopped++;
        off += std::min(done, chunk - 1);
        errs[off++] = err;
    }
    return errs;
}

// As put_all; a key that is already gone counts as removed (0), as the callers always took it.
std::vector<int> MapWriter::remove_all(MapId map, const void* keys, size_t n) {
    std::vector<int> errs(n, 0);
    const auto* k = static_cast<const uint8_t*>(keys);
    const size_t ks = map_key_size(map);
    const int m = static_cast<int>(map);
    for (size_t off = 0; off < n;) {
        if (no_batch_[m] || n - off == 1) {
            metrics_.map_calls++;
            int err = ops_.remove(map, k + off * ks);
            errs[off++] = err == -ENOENT ? 0 : err;
            continue;
        }
        auto chunk = static_cast<uint32_t>(std::min<size_t>(n - off, kMaxBatch));
        uint32_t done = 0;
        metrics_.map_calls++;
        int err = ops_.remove_batch(map, k + off * ks, chunk, &done);
        if (err == -EOPNOTSUPP && done == 0) {
            no_batch_[m] = true;
            spdlog::info("{}: the kernel has no batch delete for this map; deleting one entry per call",
                         map_name(map));
            continue;
        }
        if (!err) {
            off += chunk;
            continue;
        }
        off += std::min(done, chunk - 1);
        if (err != -ENOENT) metrics_.map_batches_stopped++;
        errs[off++] = err == -ENOENT ? 0 : err;
    }
    return errs;
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

// A failed delete leaves a stray, not a leak.
void MapWriter::drop_entries(const std::vector<kmesh_endpoint_key>& keys) {
    auto errs = remove_all(MapId::kEndpoint, keys);
    for (size_t i = 0; i < keys.size(); i++)
        if (errs[i]) state_.stray_endpoints.push_back(keys[i]);
}

kmesh_service_value MapWriter::service_value(const MapState::Service& s, uint64_t hash) {
    kmesh_service_value v{};
    for (int f = 0; f < KMESH_FAMILY_COUNT; f++)
        for (int p = 0; p < KMESH_PRIO_COUNT; p++)
            v.endpoint_count[f][p] = static_cast<uint32_t>(s.slots[f][p].size());
    v.lb_mode = s.lb_mode;
    v.flags = s.flags;
    v.affinity_timeout = s.affinity_timeout;
    v.max_connections = s.max_connections;
    v.name_hash = hash;
    return v;
}

void MapWriter::put_backends(const Plan& plan, Run& run) {
    std::vector<uint32_t> keys;
    std::vector<kmesh_backend_value> values;
    std::vector<std::tuple<uint64_t, DesiredBackend, bool>> items;  // hash, value written, id is new
    for (const auto& e : plan.put_backends) {
        auto it = state_.backends.find(e.first);
        bool fresh = it == state_.backends.end();
        uint32_t id = fresh ? backend_ids_.allocate() : it->second.id;
        if (!id) {
            fail(MapId::kBackend, -E2BIG, "allocate id");
            continue;
        }
        // Make before break: a family the backend drops keeps its old address until the slots
        // that pick it in that family are removed (a connect there must still find an address).
        DesiredBackend value = e.second;
        if (!fresh) {
            const DesiredBackend& old = it->second.value;
            uint32_t dropped = old.flags & ~value.flags & (KMESH_BACKEND_HAS_V4 | KMESH_BACKEND_HAS_V6);
            if (dropped & KMESH_BACKEND_HAS_V4) value.addr4 = old.addr4;
            if (dropped & KMESH_BACKEND_HAS_V6) value.addr6 = old.addr6;
            value.flags |= dropped;
            if (dropped) run.narrowed.emplace_back(e.first, e.second);
        }
        kmesh_backend_value v{};
        std::memcpy(v.addr4, value.addr4.data(), 16);
        std::memcpy(v.addr6, value.addr6.data(), 16);
        v.flags = value.flags;
        v.port = value.port;
        v.name_hash = e.first;
        keys.push_back(id);
        values.push_back(v);
        items.emplace_back(e.first, value, fresh);
    }
    auto errs = put_all(MapId::kBackend, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        const auto& [hash, value, fresh] = items[i];
        if (errs[i]) {
            if (fresh) backend_ids_.release(keys[i]);
            fail(MapId::kBackend, errs[i], fmt::format("write backend {}", keys[i]));
            continue;
        }
        state_.backends[hash] = {keys[i], value};
        state_.backend_hash_by_id[keys[i]] = hash;
    }
}

// The second half of a family drop (put_backends): once no counted slot of a dropped family names
// the backend, its entry is rewritten to the wanted value. One still named (a slot removal failed)
// keeps both families; the mirror says so and the next diff plans the rewrite again.
void MapWriter::narrow_backends(Run& run) {
    if (run.narrowed.empty()) return;
    std::array<std::set<uint32_t>, KMESH_FAMILY_COUNT> slotted;
    for (const auto& [h, s] : state_.services)
        for (uint32_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (const auto& prio : s.slots[f]) slotted[f].insert(prio.begin(), prio.end());
    std::vector<uint32_t> keys;
    std::vector<kmesh_backend_value> values;
    std::vector<const std::pair<uint64_t, DesiredBackend>*> items;
    for (const auto& e : run.narrowed) {
        auto it = state_.backends.find(e.first);
        if (it == state_.backends.end()) continue;
        uint32_t dropped = it->second.value.flags & ~e.second.flags;
        if (((dropped & KMESH_BACKEND_HAS_V4) && slotted[KMESH_FAMILY_V4].count(it->second.id)) ||
            ((dropped & KMESH_BACKEND_HAS_V6) && slotted[KMESH_FAMILY_V6].count(it->second.id)))
            continue;
        kmesh_backend_value v{};
        std::memcpy(v.addr4, e.second.addr4.data(), 16);
        std::memcpy(v.addr6, e.second.addr6.data(), 16);
        v.flags = e.second.flags;
        v.port = e.second.port;
        v.name_hash = e.first;
        keys.push_back(it->second.id);
        values.push_back(v);
        items.push_back(&e);
    }
    auto errs = put_all(MapId::kBackend, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kBackend, errs[i], fmt::format("write backend {}", keys[i]));
            continue;
        }
        state_.backends[items[i]->first].value = items[i]->second;
    }
    run.narrowed.clear();
}

// Creates services empty: unreachable until their frontends are written, but with an id, so that
// port overrides can be written before any endpoint that needs them is counted.
void MapWriter::create_services(const Plan& plan) {
    std::vector<uint32_t> keys;
    std::vector<kmesh_service_value> values;
    std::vector<uint64_t> hashes;
    for (const auto& [hash, params] : plan.put_services) {
        if (state_.services.count(hash)) continue;
        MapState::Service svc;
        if (!(svc.id = service_ids_.allocate())) {
            fail(MapId::kService, -E2BIG, "allocate id");
            continue;
        }
        svc.lb_mode = params.lb_mode;
        svc.flags = params.flags;
        svc.affinity_timeout = params.affinity_timeout;
        svc.max_connections = params.max_connections;
        keys.push_back(svc.id);
        values.push_back(service_value(svc, hash));
        hashes.push_back(hash);
        state_.services[hash] = std::move(svc);
    }
    auto errs = put_all(MapId::kService, keys, values);
    for (size_t i = 0; i < keys.size(); i++)
        if (errs[i]) {
            fail(MapId::kService, errs[i], fmt::format("write service {}", keys[i]));
            state_.services.erase(hashes[i]);
            service_ids_.release(keys[i]);
        }
}

// Grows services: the endpoint entries past the current counts of every growing service first (one
// batch), then, for each service whose entries all went in, its counts (and LB mode) in a single
// service write (one batch for all), so no connect picks an index that is not written yet.
// Services not grown completely go to run.incomplete.
void MapWriter::grow_services(const std::map<uint64_t, Growth>& grow, Run& run) {
    struct Pending {
        uint64_t hash;
        MapState::Service* svc;
        const std::optional<ServiceParams>* params;
        size_t first = 0, n = 0;  // its entries in keys/values
        bool skipped = false;
    };
    std::vector<Pending> pending;
    std::vector<kmesh_endpoint_key> keys;
    std::vector<kmesh_endpoint_value> values;
    for (const auto& [hash, g] : grow) {
        auto it = state_.services.find(hash);
        if (it == state_.services.end()) {  // its creation failed
            run.incomplete.insert(hash);
            continue;
        }
        Pending p{hash, &it->second, &g.first, keys.size()};
        std::array<std::array<uint32_t, KMESH_PRIO_COUNT>, KMESH_FAMILY_COUNT> count{};
        for (int f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (int q = 0; q < KMESH_PRIO_COUNT; q++)
                count[f][q] = static_cast<uint32_t>(p.svc->slots[f][q].size());
        for (const auto& a : g.second) {
            auto b = state_.backends.find(a.backend);
            // Its backend, one of its port overrides or its membership failed to be written: added
            // by a later apply.
            auto member =
                b == state_.backends.end() ? p.svc->members.end() : p.svc->members.find(b->second.id);
            if (b == state_.backends.end() || unported_.count({a.backend, hash}) ||
                member == p.svc->members.end() || member->second == 0) {
                p.skipped = true;
                continue;
            }
            keys.push_back({p.svc->id, static_cast<uint16_t>(a.family), static_cast<uint16_t>(a.prio),
                            ++count[a.family][a.prio]});
            values.push_back({b->second.id});
        }
        p.n = keys.size() - p.first;
        pending.push_back(p);
    }
    auto errs = put_all(MapId::kEndpoint, keys, values);

    std::vector<uint32_t> skeys;
    std::vector<kmesh_service_value> svalues;
    std::vector<size_t> counted;  // index into pending, per service write
    std::vector<kmesh_endpoint_key> drop;
    for (size_t i = 0; i < pending.size(); i++) {
        Pending& p = pending[i];
        auto bad =
            std::find_if(errs.begin() + p.first, errs.begin() + p.first + p.n, [](int e) { return e != 0; });
        if (bad != errs.begin() + p.first + p.n) {
            const auto& k = keys[bad - errs.begin()];
            fail(MapId::kEndpoint, *bad,
                 fmt::format("write endpoint {}/{}/{}/{}", k.service_id, k.family, k.prio, k.index));
            // Entries past the kernel's count are never picked; remove them to keep capacity.
            for (size_t j = p.first; j < p.first + p.n; j++)
                if (!errs[j]) drop.push_back(keys[j]);
            run.incomplete.insert(p.hash);
            continue;
        }
        // The entry it will have: its counts raised past the new slots, its new LB parameters (no
        // copy of the mirror's service, whose members and slots can be large).
        kmesh_service_value next = service_value(*p.svc, p.hash);
        if (*p.params) {
            next.lb_mode = (*p.params)->lb_mode;
            next.flags = (*p.params)->flags;
            next.affinity_timeout = (*p.params)->affinity_timeout;
            next.max_connections = (*p.params)->max_connections;
        }
        for (size_t j = p.first; j < p.first + p.n; j++) next.endpoint_count[keys[j].family][keys[j].prio]++;
        skeys.push_back(p.svc->id);
        svalues.push_back(next);
        counted.push_back(i);
    }
    auto serrs = put_all(MapId::kService, skeys, svalues);
    for (size_t c = 0; c < counted.size(); c++) {
        Pending& p = pending[counted[c]];
        if (serrs[c]) {
            fail(MapId::kService, serrs[c], fmt::format("write service {}", skeys[c]));
            for (size_t j = p.first; j < p.first + p.n; j++) drop.push_back(keys[j]);
            run.incomplete.insert(p.hash);
            continue;
        }
        if (*p.params) {
            p.svc->lb_mode = (*p.params)->lb_mode;
            p.svc->flags = (*p.params)->flags;
            p.svc->affinity_timeout = (*p.params)->affinity_timeout;
            p.svc->max_connections = (*p.params)->max_connections;
        }
        for (size_t j = p.first; j < p.first + p.n; j++)
            p.svc->slots[keys[j].family][keys[j].prio].push_back(values[j].backend_id);
        if (p.skipped) run.incomplete.insert(p.hash);
    }
    drop_entries(drop);
}

void MapWriter::put_members(const std::vector<MemberPut>& puts) {
    std::vector<kmesh_member_key> keys;
    std::vector<kmesh_member_value> values;
    std::vector<MapState::Service*> services;
    for (const auto& m : puts) {
        auto s = state_.services.find(m.service);
        auto b = state_.backends.find(m.backend);
        if (s == state_.services.end() || b == state_.backends.end()) continue;  // their writes failed
        keys.push_back({s->second.id, b->second.id});
        values.push_back({m.weight, 0});
        services.push_back(&s->second);
    }
    auto errs = put_all(MapId::kMember, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kMember, errs[i],
                 fmt::format("write member {}/{}", keys[i].service_id, keys[i].backend_id));
            continue;
        }
        services[i]->members[keys[i].backend_id] = values[i].weight;
    }
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

void MapWriter::put_frontends(const std::vector<std::pair<kmesh_frontend_key, FrontendTarget>>& puts) {
    std::vector<kmesh_frontend_key> keys;
    std::vector<kmesh_frontend_value> values;
    std::vector<const FrontendTarget*> targets;
    for (const auto& [key, target] : puts) {
        kmesh_frontend_value v{};
        // A frontend never names an id that is not written: held back (a published one keeps its
        // old entry) until a retry writes its split or limit.
        auto hold = [this](const kmesh_frontend_key& k, const char* what, uint64_t hash) {
            metrics_.frontends_unpublished++;
            errors_.push_back(fmt::format("frontend {} not written: its {} {:016x} is not in the maps",
                                          frontend_key_str(k), what, hash));
        };
        if (target.flags & KMESH_FRONTEND_SPLIT) {
            auto sp = state_.splits.find(target.service);
            if (sp == state_.splits.end()) {
                hold(key, "split", target.service);
                continue;
            }
            v.service_id = sp->second.id;
        } else {
            auto svc = state_.services.find(target.service);
            if (svc == state_.services.end()) continue;  // its service failed to be written
            v.service_id = svc->second.id;
        }
        if (target.flags & KMESH_FRONTEND_LIMITED) {
            auto l = state_.limits.find(target.limit);
            if (l == state_.limits.end()) {
                hold(key, "rate limit", target.limit);
                continue;
            }
            v.limit_id = l->second.id;
        }
        keys.push_back(key);
        v.target_port = target.target_port;
        v.flags = target.flags;
        values.push_back(v);
        targets.push_back(&target);
    }
    auto errs = put_all(MapId::kFrontend, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kFrontend, errs[i], "write frontend");
            continue;
        }
        forget_frontend(keys[i]);
        state_.frontends[keys[i]] = *targets[i];
        state_.frontends_by_service[targets[i]->service].insert(keys[i]);
    }
}

// Returns, per key, whether it is gone (then forgotten).
std::vector<bool> MapWriter::remove_frontends(const std::vector<kmesh_frontend_key>& keys) {
    auto errs = remove_all(MapId::kFrontend, keys);
    std::vector<bool> gone(keys.size());
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kFrontend, errs[i], "delete frontend");
            continue;
        }
        forget_frontend(keys[i]);
        gone[i] = true;
    }
    return gone;
}

// Dense delete of endpoint slots, every list of the plan at once, in three batches. Say a list of
// L slots loses k: the slots that stay beyond L - k are first copied into the holes below it (the
// count still says L, and every index below it holds a live backend: a removed one stays live
// until the backends stage), then each service's counts shrink in one service write, then the
// entries past the new counts go. A connect racing with this sees either the old or the new
// count; one that read the old count and picks an entry that has just gone retries (BPF's
// RACE_RETRY). A list whose copy failed keeps its count (the mirror records the copies that went
// in); a service whose write failed keeps its counts, and its entries stay.
void MapWriter::shrink_lists(
    const std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::set<uint32_t>>& shrink) {
    struct List {
        MapState::Service* svc;
        uint64_t hash;
        uint32_t family, prio, new_len;
        size_t first = 0, n = 0;  // its copies in keys/values
        bool ok = true;
    };
    std::vector<List> lists;
    std::vector<kmesh_endpoint_key> keys;
    std::vector<kmesh_endpoint_value> values;
    for (const auto& [sfp, indices] : shrink) {
        auto it = state_.services.find(std::get<0>(sfp));
        if (it == state_.services.end()) continue;
        uint32_t family = std::get<1>(sfp), prio = std::get<2>(sfp);
        const auto& slots = it->second.slots[family][prio];
        auto len = static_cast<uint32_t>(slots.size());
        // An index past the list cannot happen for a fresh diff; ignore it rather than corrupt.
        uint32_t k = 0;
        for (uint32_t i : indices) k += i >= 1 && i <= len;
        List l{&it->second, std::get<0>(sfp), family, prio, len - k, keys.size()};
        auto fam = static_cast<uint16_t>(family);
        auto pri = static_cast<uint16_t>(prio);
        auto hole = indices.begin();
        for (uint32_t tail = l.new_len + 1; tail <= len; tail++) {
            if (indices.count(tail)) continue;  // goes too
            while (hole != indices.end() && (*hole < 1 || *hole > l.new_len)) ++hole;
            if (hole == indices.end()) break;  // cannot happen: holes below = keepers above
            keys.push_back({l.svc->id, fam, pri, *hole});
            values.push_back({slots[tail - 1]});
            ++hole;
        }
        l.n = keys.size() - l.first;
        lists.push_back(l);
    }
    auto errs = put_all(MapId::kEndpoint, keys, values);
    std::map<uint64_t, std::vector<size_t>> by_service;  // lists to shrink, per service hash
    for (size_t i = 0; i < lists.size(); i++) {
        List& l = lists[i];
        auto& slots = l.svc->slots[l.family][l.prio];
        for (size_t j = l.first; j < l.first + l.n; j++) {
            if (errs[j]) {
                if (l.ok)
                    fail(MapId::kEndpoint, errs[j],
                         fmt::format("move endpoint {}/{}/{}/{}", keys[j].service_id, l.family, l.prio,
                                     keys[j].index));
                l.ok = false;
                continue;
            }
            slots[keys[j].index - 1] = values[j].backend_id;
        }
        if (l.ok) by_service[l.hash].push_back(i);
    }
    std::vector<uint32_t> skeys;
    std::vector<kmesh_service_value> svalues;
    std::vector<const std::vector<size_t>*> shrunk;
    for (const auto& [hash, idx] : by_service) {
        MapState::Service* svc = lists[idx.front()].svc;
        kmesh_service_value v = service_value(*svc, hash);
        for (size_t i : idx) v.endpoint_count[lists[i].family][lists[i].prio] = lists[i].new_len;
        skeys.push_back(svc->id);
        svalues.push_back(v);
        shrunk.push_back(&idx);
    }
    auto serrs = put_all(MapId::kService, skeys, svalues);
    std::vector<kmesh_endpoint_key> drop;
    for (size_t s = 0; s < skeys.size(); s++) {
        if (serrs[s]) {  // the kernel still counts the old lengths, whose entries are intact
            fail(MapId::kService, serrs[s], fmt::format("write service {}", skeys[s]));
            continue;
        }
        for (size_t i : *shrunk[s]) {
            List& l = lists[i];
            auto& slots = l.svc->slots[l.family][l.prio];
            for (auto idx = static_cast<uint32_t>(slots.size()); idx > l.new_len; idx--)
                drop.push_back(
                    {l.svc->id, static_cast<uint16_t>(l.family), static_cast<uint16_t>(l.prio), idx});
            slots.resize(l.new_len);
        }
    }
    drop_entries(drop);
}

// Each service entry first, then its slots, then its members (after the slots that name them).
void MapWriter::delete_services(const std::vector<uint64_t>& hashes) {
    std::vector<uint32_t> ids;
    std::vector<uint64_t> found;
    for (uint64_t hash : hashes) {
        auto it = state_.services.find(hash);
        if (it == state_.services.end()) continue;
        ids.push_back(it->second.id);
        found.push_back(hash);
    }
    auto errs = remove_all(MapId::kService, ids);
    std::vector<kmesh_endpoint_key> slots;
    std::vector<kmesh_member_key> members;
    std::vector<uint64_t> gone;
    for (size_t i = 0; i < ids.size(); i++) {
        if (errs[i]) {
            fail(MapId::kService, errs[i], fmt::format("delete service {}", ids[i]));
            continue;
        }
        const auto& svc = state_.services.at(found[i]);
        for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++)
                for (uint32_t idx = 1; idx <= svc.slots[f][p].size(); idx++)
                    slots.push_back({svc.id, f, p, idx});
        for (const auto& [bid, weight] : svc.members) members.push_back({svc.id, bid});
        gone.push_back(found[i]);
    }
    drop_entries(slots);
    auto merrs = remove_all(MapId::kMember, members);
    for (size_t i = 0; i < members.size(); i++)
        if (merrs[i]) {
            fail(MapId::kMember, merrs[i],
                 fmt::format("delete member {}/{}", members[i].service_id, members[i].backend_id));
            state_.stray_members.push_back(members[i]);
        }
    // An id stays reserved while stray entries of it may remain, so no new service inherits them.
    std::set<uint32_t> stray_ids;
    for (const auto& k : state_.stray_endpoints) stray_ids.insert(k.service_id);
    for (const auto& k : state_.stray_members) stray_ids.insert(k.service_id);
    for (uint64_t hash : gone) {
        auto it = state_.services.find(hash);
        if (!stray_ids.count(it->second.id)) service_ids_.release(it->second.id);
        state_.services.erase(it);
    }
}

// Strays are unreachable (beyond a count, or of a service no frontend uses), so they go first:
// later writes of this apply may reuse their keys.
void MapWriter::delete_strays() {
    drop_entries(std::exchange(state_.stray_endpoints, {}));
    // No frontend names these buckets' ids (see MapState::stray_buckets): BPF makes no new one
    // before a limit of that id is written, which this apply does only after.
    auto buckets = std::exchange(state_.stray_buckets, {});
    auto berrs = remove_all(MapId::kRateLimit, buckets);
    for (size_t i = 0; i < buckets.size(); i++)
        if (berrs[i]) state_.stray_buckets.push_back(buckets[i]);
    auto ports = std::exchange(state_.stray_ports, {});
    auto perrs = remove_all(MapId::kPort, ports);
    for (size_t i = 0; i < ports.size(); i++)
        if (perrs[i]) state_.stray_ports.push_back(ports[i]);
    auto members = std::exchange(state_.stray_members, {});
    auto merrs = remove_all(MapId::kMember, members);
    for (size_t i = 0; i < members.size(); i++)
        if (merrs[i]) state_.stray_members.push_back(members[i]);
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
        case Stage::kLimits:
            return "limits";
        case Stage::kSplits:
            return "splits";
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
        case MapId::kSplit:
            return "--max-splits";
        case MapId::kLimitCfg:
            return "--max-rate-limits";
        case MapId::kRateLimit:
            return "--max-rate-limit-buckets";
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
    out[static_cast<int>(MapId::kSplit)] = c.splits;
    out[static_cast<int>(MapId::kLimitCfg)] = c.limits;
    out[static_cast<int>(MapId::kRateLimit)] = c.ratelimits;
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
    n[static_cast<int>(MapId::kSplit)] = d.splits.size();
    n[static_cast<int>(MapId::kLimitCfg)] = d.limits.size();
    for (const auto& [h, s] : d.services) {
        n[static_cast<int>(MapId::kMember)] += s.members.size();
        n[static_cast<int>(MapId::kEndpoint)] += s.endpoint_slot_count();
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
    n[static_cast<int>(MapId::kSplit)] = state_.splits.size();
    n[static_cast<int>(MapId::kLimitCfg)] = state_.limits.size();
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
    for (const auto& [h, v] : plan.put_splits) at(add, MapId::kSplit) += !state_.splits.count(h);
    for (uint64_t h : plan.delete_splits) at(del, MapId::kSplit) += state_.splits.count(h);
    for (const auto& [h, v] : plan.put_limits) at(add, MapId::kLimitCfg) += !state_.limits.count(h);
    for (uint64_t h : plan.delete_limits) at(del, MapId::kLimitCfg) += state_.limits.count(h);

    MapCounts result{}, peak{};
    for (int i = 0; i < kMapCount; i++) {
        result[i] = now[i] + add[i] - std::min(del[i], now[i] + add[i]);
        peak[i] = now[i] + add[i];
    }
    *additions_fit = overflow(peak, capacity_, "").empty();
    std::string o = overflow(result, capacity_, "after this change");
    return o.empty() ? o : "nothing written: " + o;
}

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
        case Stage::kLimits:
            put_limits(plan);
            break;
        case Stage::kSplits:
            put_splits(plan, run);
            break;
        case Stage::kBackends:
            put_backends(plan, run);
            break;
        case Stage::kServices:
            create_services(plan);
            break;
        case Stage::kMembers: {
            std::vector<MemberPut> puts;
            for (const auto& m : plan.put_members)
                if (!drains(m)) puts.push_back(m);
            put_members(puts);
            break;
        }
        case Stage::kPorts: {
            std::vector<kmesh_port_key> keys;
            std::vector<kmesh_port_value> values;
            std::vector<const PortKey*> names;
            for (const auto& [pk, target] : plan.put_ports) {
                kmesh_port_key k;
                if (!port_key(pk, &k)) continue;  // its service or backend failed to be written
                keys.push_back(k);
                values.push_back({target, 0});
                names.push_back(&pk);
            }
            auto errs = put_all(MapId::kPort, keys, values);
            for (size_t i = 0; i < keys.size(); i++) {
                if (errs[i]) {
                    fail(MapId::kPort, errs[i], "write port override");
                    unported_.insert({names[i]->backend, names[i]->service});
                    continue;
                }
                state_.ports[*names[i]] = values[i].target_port;
            }
            break;
        }
        case Stage::kFrontendFlags: {
            std::vector<std::pair<kmesh_frontend_key, FrontendTarget>> puts;
            for (const auto& [key, target] : plan.put_frontends)
                if (!run.unpublished.count(target.service) && !clears_flag(state_, key, target))
                    puts.emplace_back(key, target);
            put_frontends(puts);
            break;
        }
        case Stage::kEndpoints: {
            // plan.put_services and plan.add_endpoints are both ordered by service hash.
            std::map<uint64_t, Growth> grow;
            for (const auto& [hash, params] : plan.put_services) grow[hash].first = params;
            for (const auto& a : plan.add_endpoints) grow[a.service].second.push_back(a);
            grow_services(grow, run);
            break;
        }
        case Stage::kFrontends: {
            std::set<uint64_t> held;
            std::vector<std::pair<kmesh_frontend_key, FrontendTarget>> puts;
            for (const auto& [key, target] : plan.put_frontends) {
                if (!run.unpublished.count(target.service)) continue;
                if (target.flags &
                    KMESH_FRONTEND_SPLIT) {  // put_frontends holds it if its split is not there
                    puts.emplace_back(key, target);
                    continue;
                }
                if (run.incomplete.count(target.service) || !state_.services.count(target.service)) {
                    held.insert(target.service);
                    continue;
                }
                puts.emplace_back(key, target);
            }
            put_frontends(puts);
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
        case Stage::kLimits:
            clear_limits(plan);
            break;
        case Stage::kSplits:
            delete_splits(plan);
            break;
        case Stage::kFrontends: {
            // Making room first, a VIP moving from a service being deleted to one being created
            // would pin the old service (its frontend still points at it) while the new one has
            // no room: unpublish the VIP for the moment instead; the new service publishes it.
            if (run.removals_first && !run.shrunk) {
                std::vector<kmesh_frontend_key> keys;
                std::vector<uint64_t> targets;
                for (const auto& [key, target] : plan.put_frontends) {
                    auto cur = state_.frontends.find(key);
                    if (cur == state_.frontends.end() || cur->second.service == target.service ||
                        std::find(plan.delete_services.begin(), plan.delete_services.end(),
                                  cur->second.service) == plan.delete_services.end())
                        continue;
                    keys.push_back(key);
                    targets.push_back(target.service);
                }
                auto gone = remove_frontends(keys);
                for (size_t i = 0; i < keys.size(); i++)
                    if (gone[i]) run.unpublished.insert(targets[i]);
            }
            std::vector<kmesh_frontend_key> keys;
            for (const auto& key : plan.delete_frontends)
                if (state_.frontends.count(key)) keys.push_back(key);
            remove_frontends(keys);
            break;
        }
        case Stage::kEndpoints: {
            if (run.shrunk) break;
            run.shrunk = true;
            std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::set<uint32_t>> shrink;
            for (const auto& r : plan.remove_endpoints) shrink[{r.service, r.family, r.prio}].insert(r.index);
            shrink_lists(shrink);
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
            std::vector<MemberPut> drained;
            for (const auto& m : plan.put_members) {
                if (!drains(m)) continue;
                auto s = state_.services.find(m.service);
                auto b = state_.backends.find(m.backend);
                if (s != state_.services.end() && b != state_.backends.end() &&
                    !slotted(s->second, b->second.id))
                    drained.push_back(m);
            }
            put_members(drained);
            std::vector<kmesh_member_key> keys;
            std::vector<MapState::Service*> services;
            for (const auto& m : plan.delete_members) {
                auto it = state_.services.find(m.service);
                if (it == state_.services.end() || !it->second.members.count(m.backend_id) ||
                    slotted(it->second, m.backend_id))
                    continue;
                keys.push_back({it->second.id, m.backend_id});
                services.push_back(&it->second);
            }
            auto errs = remove_all(MapId::kMember, keys);
            for (size_t i = 0; i < keys.size(); i++) {
                if (errs[i]) {
                    fail(MapId::kMember, errs[i],
                         fmt::format("delete member {}/{}", keys[i].service_id, keys[i].backend_id));
                    continue;
                }
                services[i]->members.erase(keys[i].backend_id);
            }
            break;
        }
        case Stage::kFrontendFlags: {
            // Only once every endpoint that needed an override is uncounted: after a failure the
            // flag stays until a retry.
            if (!errors_.empty()) break;
            std::vector<std::pair<kmesh_frontend_key, FrontendTarget>> puts;
            for (const auto& [key, target] : plan.put_frontends)
                if (!run.unpublished.count(target.service) && clears_flag(state_, key, target))
                    puts.emplace_back(key, target);
            put_frontends(puts);
            break;
        }
        case Stage::kPorts: {
            // A removed override makes BPF fall back to the frontend's port, which is then right.
            std::vector<kmesh_port_key> keys;
            std::vector<const PortKey*> names;
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
                keys.push_back(k);
                names.push_back(&pk);
            }
            auto errs = remove_all(MapId::kPort, keys);
            for (size_t i = 0; i < keys.size(); i++) {
                if (errs[i]) {
                    fail(MapId::kPort, errs[i], "delete port override");
                    // Its service or backend id may be released below: keep the raw key, not the names.
                    state_.stray_ports.push_back(keys[i]);
                }
                state_.ports.erase(*names[i]);
            }
            break;
        }
        case Stage::kServices: {
            std::set<uint64_t> referenced;
            if (check_refs)
                for (const auto& [k, t] : state_.frontends) referenced.insert(t.service);
            // A split still written (its delete failed, or it is still named) keeps its services.
            for (const auto& [h, sp] : state_.splits)
                for (const auto& [service, weight] : sp.value.services) referenced.insert(service);
            std::vector<uint64_t> hashes;
            for (uint64_t hash : plan.delete_services)
                if (!referenced.count(hash)) hashes.push_back(hash);
            delete_services(hashes);
            auto strays = std::exchange(state_.stray_services, {});
            auto errs = remove_all(MapId::kService, strays);
            for (size_t i = 0; i < strays.size(); i++)
                if (errs[i]) state_.stray_services.push_back(strays[i]);
            break;
        }
        case Stage::kBackends: {
            narrow_backends(run);
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
            std::vector<uint32_t> ids;
            std::vector<uint64_t> hashes;
            for (uint64_t hash : plan.delete_backends) {
                auto it = state_.backends.find(hash);
                if (it == state_.backends.end() || referenced.count(it->second.id)) continue;
                ids.push_back(it->second.id);
                hashes.push_back(hash);
            }
            auto errs = remove_all(MapId::kBackend, ids);
            for (size_t i = 0; i < ids.size(); i++) {
                if (errs[i]) {
                    fail(MapId::kBackend, errs[i], "delete backend");
                    continue;
                }
                backend_ids_.release(ids[i]);
                state_.backend_hash_by_id.erase(ids[i]);
                state_.backends.erase(hashes[i]);
            }
            std::vector<uint32_t> strays;
            for (uint32_t id : std::exchange(state_.stray_backends, {})) {
                if (referenced.count(id))
                    state_.stray_backends.push_back(id);
                else
                    strays.push_back(id);
            }
            auto serrs = remove_all(MapId::kBackend, strays);
            for (size_t i = 0; i < strays.size(); i++)
                if (serrs[i]) state_.stray_backends.push_back(strays[i]);
            break;
        }
    }
}

void MapWriter::put_waypoints(const Plan& plan) {
    if (plan.put_waypoints.empty()) return;
    stage_log_.push_back("+waypoints");
    std::vector<uint64_t> keys;
    std::vector<kmesh_waypoint_value> values;
    for (const auto& [id, v] : plan.put_waypoints) {
        keys.push_back(id);
        values.push_back(v);
    }
    auto errs = put_all(MapId::kWaypoint, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kWaypoint, errs[i], fmt::format("write waypoint {:016x}", keys[i]));
            continue;
        }
        state_.waypoints[keys[i]] = values[i];
    }
}

void MapWriter::put_waypoint_dests(const Plan& plan) {
    if (plan.put_waypoint_dests.empty()) return;
    stage_log_.push_back("+waypoint-addresses");
    std::vector<kmesh_wp_dest_key> keys;
    std::vector<kmesh_wp_dest_value> values;
    for (const auto& [k, v] : plan.put_waypoint_dests) {
        // Never point at a waypoint that is not written (its write failed): a retry will.
        if (!state_.waypoints.count(v.waypoint_id)) continue;
        keys.push_back(k);
        values.push_back(v);
    }
    auto errs = put_all(MapId::kWaypointDest, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kWaypointDest, errs[i], "write waypoint address");
            continue;
        }
        state_.waypoint_dests[keys[i]] = values[i];
    }
}

void MapWriter::delete_waypoint_dests(const Plan& plan) {
    if (plan.delete_waypoint_dests.empty()) return;
    stage_log_.push_back("-waypoint-addresses");
    std::vector<kmesh_wp_dest_key> keys;
    for (const auto& k : plan.delete_waypoint_dests)
        if (state_.waypoint_dests.count(k)) keys.push_back(k);
    auto errs = remove_all(MapId::kWaypointDest, keys);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kWaypointDest, errs[i], "delete waypoint address");
            continue;
        }
        state_.waypoint_dests.erase(keys[i]);
    }
}

void MapWriter::delete_waypoints(const Plan& plan) {
    if (plan.delete_waypoints.empty()) return;
    stage_log_.push_back("-waypoints");
    std::set<uint64_t> referenced;
    for (const auto& [k, v] : state_.waypoint_dests) referenced.insert(v.waypoint_id);
    std::vector<uint64_t> keys;
    for (uint64_t id : plan.delete_waypoints)
        if (state_.waypoints.count(id) && !referenced.count(id)) keys.push_back(id);
    auto errs = remove_all(MapId::kWaypoint, keys);
    for (size_t i = 0; i < keys.size(); i++) {
        if (errs[i]) {
            fail(MapId::kWaypoint, errs[i], fmt::format("delete waypoint {:016x}", keys[i]));
            continue;
        }
        state_.waypoints.erase(keys[i]);
    }
}

void MapWriter::put_limits(const Plan& plan) {
    std::vector<uint32_t> keys;
    std::vector<kmesh_limit_cfg> values;
    std::vector<std::pair<uint64_t, bool>> items;  // hash, id is new
    for (const auto& [hash, l] : plan.put_limits) {
        auto it = state_.limits.find(hash);
        bool fresh = it == state_.limits.end();
        uint32_t id = fresh ? limit_ids_.allocate() : it->second.id;
        if (!id) {
            fail(MapId::kLimitCfg, -E2BIG, "allocate id");
            continue;
        }
        // A changed limit is rewritten in place: its buckets keep their tokens, capped by BPF at
        // the new max_tokens on their next refill, as Envoy keeps a bucket across a config update
        // of the same filter chain.
        keys.push_back(id);
        values.push_back({l.max_tokens, l.tokens_per_fill, l.fill_interval_ns, hash});
        items.emplace_back(hash, fresh);
    }
    auto errs = put_all(MapId::kLimitCfg, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        const auto& [hash, fresh] = items[i];
        if (errs[i]) {
            if (fresh) limit_ids_.release(keys[i]);
            fail(MapId::kLimitCfg, errs[i], fmt::format("write limit {}", keys[i]));
            continue;
        }
        state_.limits[hash] = {keys[i],
                               {values[i].max_tokens, values[i].tokens_per_fill, values[i].fill_interval_ns}};
    }
}

// A limit no frontend names any more (and every stray id): its config is zeroed (km_limit_cfg is an
// ARRAY: nothing to delete; zero means "no bucket, let through"), then every bucket of its id is
// deleted, then the id is free. A reused id so never finds an old limit's bucket: BPF makes a
// fresh, full one. An id whose clearing failed stays reserved (a stray) for the next apply.
void MapWriter::clear_limits(const Plan& plan) {
    std::set<uint64_t> named;
    for (const auto& [k, t] : state_.frontends)
        if (t.flags & KMESH_FRONTEND_LIMITED) named.insert(t.limit);
    std::vector<uint32_t> ids = std::exchange(state_.stray_limits, {});
    for (uint64_t hash : plan.delete_limits) {
        auto it = state_.limits.find(hash);
        if (it == state_.limits.end() || named.count(hash)) continue;
        ids.push_back(it->second.id);
        state_.limits.erase(it);
    }
    if (ids.empty()) return;
    std::vector<kmesh_limit_cfg> zeros(ids.size(), kmesh_limit_cfg{});
    auto errs = put_all(MapId::kLimitCfg, ids, zeros);
    std::set<uint32_t> cleared;
    for (size_t i = 0; i < ids.size(); i++) {
        if (errs[i]) {
            fail(MapId::kLimitCfg, errs[i], fmt::format("clear limit {}", ids[i]));
            state_.stray_limits.push_back(ids[i]);
            continue;
        }
        cleared.insert(ids[i]);
    }
    std::vector<kmesh_ratelimit_key> buckets;
    ops_.for_each(MapId::kRateLimit, [&](const void* k, const void*) {
        kmesh_ratelimit_key key;
        std::memcpy(&key, k, sizeof key);
        if (cleared.count(key.limit_id)) buckets.push_back(key);
        return true;
    });
    auto berrs = remove_all(MapId::kRateLimit, buckets);
    for (size_t i = 0; i < buckets.size(); i++)
        if (berrs[i] && cleared.erase(buckets[i].limit_id)) {
            fail(MapId::kRateLimit, berrs[i], fmt::format("delete bucket of limit {}", buckets[i].limit_id));
            state_.stray_limits.push_back(buckets[i].limit_id);
        }
    // A bucket BPF makes between the zeroing and here cannot be: a zeroed limit takes no token,
    // and no frontend names the id any more.
    for (uint32_t id : cleared) limit_ids_.release(id);
}

// Written once all its services are in the maps and none of them is held back incomplete: a split
// picks among them without asking whether they are published.
void MapWriter::put_splits(const Plan& plan, const Run& run) {
    std::vector<uint32_t> keys;
    std::vector<kmesh_split_value> values;
    std::vector<std::pair<uint64_t, const DesiredSplit*>> items;
    for (const auto& [hash, sp] : plan.put_splits) {
        kmesh_split_value v{};
        bool ok = !sp.services.empty() && sp.services.size() <= KMESH_SPLIT_MAX;
        uint32_t total = 0;
        for (size_t i = 0; ok && i < sp.services.size(); i++) {
            auto svc = state_.services.find(sp.services[i].first);
            ok = svc != state_.services.end() && !run.incomplete.count(sp.services[i].first) &&
                 sp.services[i].second > 0;
            if (!ok) break;
            v.service_id[i] = svc->second.id;
            v.cum_weight[i] = total += sp.services[i].second;
        }
        if (!ok) {
            errors_.push_back(
                fmt::format("split {:016x} not written: one of its services is not (completely) in "
                            "the maps",
                            hash));
            continue;
        }
        auto it = state_.splits.find(hash);
        bool fresh = it == state_.splits.end();
        uint32_t id = fresh ? split_ids_.allocate() : it->second.id;
        if (!id) {
            fail(MapId::kSplit, -E2BIG, "allocate id");
            continue;
        }
        v.count = static_cast<uint32_t>(sp.services.size());
        v.total = total;
        v.name_hash = hash;
        keys.push_back(id);
        values.push_back(v);
        items.emplace_back(hash, &sp);
        if (fresh) state_.splits[hash] = {id, {}};  // reserved; filled below once written
    }
    auto errs = put_all(MapId::kSplit, keys, values);
    for (size_t i = 0; i < keys.size(); i++) {
        auto& entry = state_.splits[items[i].first];
        if (errs[i]) {
            fail(MapId::kSplit, errs[i], fmt::format("write split {}", keys[i]));
            if (entry.value.services.empty()) {  // new: never written
                split_ids_.release(keys[i]);
                state_.splits.erase(items[i].first);
            }
            continue;
        }
        entry.value = *items[i].second;
    }
}

// After the frontends: a split still named by one (its delete failed) stays.
void MapWriter::delete_splits(const Plan& plan) {
    std::set<uint64_t> named;
    for (const auto& [k, t] : state_.frontends)
        if (t.flags & KMESH_FRONTEND_SPLIT) named.insert(t.service);
    std::vector<uint32_t> ids;
    std::vector<uint64_t> hashes;
    for (uint64_t hash : plan.delete_splits) {
        auto it = state_.splits.find(hash);
        if (it == state_.splits.end() || named.count(hash)) continue;
        ids.push_back(it->second.id);
        hashes.push_back(hash);
    }
    auto errs = remove_all(MapId::kSplit, ids);
    for (size_t i = 0; i < ids.size(); i++) {
        if (errs[i]) {
            fail(MapId::kSplit, errs[i], fmt::format("delete split {}", ids[i]));
            continue;
        }
        split_ids_.release(ids[i]);
        state_.splits.erase(hashes[i]);
    }
    auto strays = std::exchange(state_.stray_splits, {});
    auto serrs = remove_all(MapId::kSplit, strays);
    for (size_t i = 0; i < strays.size(); i++) {
        if (serrs[i])
            state_.stray_splits.push_back(strays[i]);
        else
            split_ids_.release(strays[i]);
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
