// In-memory MapOps for unit tests: byte-exact entries, per-map capacity (E2BIG when full, as a
// hash map answers), and a hook run after every mutation so tests can check invariants at every
// intermediate state a connect() could observe.
#pragma once

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "agent/src/dataplane/map_ops.hpp"
#include "common/abi.hpp"

namespace kmesh::test {

class FakeMapOps : public MapOps {
  public:
    // std::string, not std::vector<uint8_t>: GCC 12 at -O3 raises a false -Wstringop-overread on
    // vector<uint8_t>'s three-way compare inside std::map.
    using Bytes = std::string;

    FakeMapOps() { capacity_.fill(1u << 30); }

    int update(MapId map, const void* key, const void* value) override {
        auto& m = maps_[idx(map)];
        Bytes k = bytes(key, key_size(map));
        if (fail_after_ >= 0 && fail_after_-- == 0) return -EIO;
        if (!m.count(k) && m.size() >= capacity_[idx(map)]) return -E2BIG;
        m[k] = bytes(value, value_size(map));
        ops.push_back(std::string("put ") + map_name(map));
        if (after_mutation) after_mutation();
        return 0;
    }
    int remove(MapId map, const void* key) override {
        if (fail_remove_after_ >= 0 && fail_remove_after_-- == 0) return -EIO;
        if (!maps_[idx(map)].erase(bytes(key, key_size(map)))) return -ENOENT;
        ops.push_back(std::string("del ") + map_name(map));
        if (after_mutation) after_mutation();
        return 0;
    }
    // As the kernel's generic batch: entry by entry in order, each visible (after_mutation) before
    // the next, stopping at the first failure with *done = the entries before it.
    int update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) override {
        *done = 0;
        if (no_batch_[idx(map)]) return -EOPNOTSUPP;
        batches.push_back(std::string("put ") + map_name(map) + " " + std::to_string(n));
        const auto* k = static_cast<const uint8_t*>(keys);
        const auto* v = static_cast<const uint8_t*>(values);
        for (uint32_t i = 0; i < n; i++) {
            if (int err = update(map, k + i * key_size(map), v + i * value_size(map))) return err;
            ++*done;
        }
        return 0;
    }
    int remove_batch(MapId map, const void* keys, uint32_t n, uint32_t* done) override {
        *done = 0;
        if (no_batch_[idx(map)]) return -EOPNOTSUPP;
        batches.push_back(std::string("del ") + map_name(map) + " " + std::to_string(n));
        const auto* k = static_cast<const uint8_t*>(keys);
        for (uint32_t i = 0; i < n; i++) {
            if (int err = remove(map, k + i * key_size(map))) return err;
            ++*done;
        }
        return 0;
    }
    // The map has no batch operation (as an old kernel): the writer must go one entry at a time.
    void refuse_batches(MapId map) { no_batch_[idx(map)] = true; }

    int lookup(MapId map, const void* key, void* value) const override {
        auto& m = maps_[idx(map)];
        auto it = m.find(bytes(key, key_size(map)));
        if (it == m.end()) return -ENOENT;
        std::memcpy(value, it->second.data(), it->second.size());
        return 0;
    }
    void for_each(MapId map, const std::function<bool(const void*, const void*)>& fn) const override {
        for (const auto& [k, v] : maps_[idx(map)])
            if (!fn(k.data(), v.data())) return;
    }

    size_t size(MapId map) const { return maps_[idx(map)].size(); }
    void set_capacity(MapId map, size_t n) { capacity_[idx(map)] = n; }
    void fail_nth_update(int n) { fail_after_ = n; }
    void fail_nth_remove(int n) { fail_remove_after_ = n; }

    template <typename K, typename V>
    bool get(MapId map, const K& key, V* value) const {
        return lookup(map, &key, value) == 0;
    }

    // What BPF connect4 would do for every index of every frontend's service: returns "" when
    // every frontend resolves to live entries, else what is broken.
    std::string check_connect_invariant() const {
        std::string broken;
        // Kernel-native: a split frontend reaches each of its split's services; a limited one
        // needs a written limit config (BPF lets a zeroed one through: that is a stale id).
        for_each(MapId::kFrontend, [&](const void*, const void* v) {
            kmesh_frontend_value fe;
            std::memcpy(&fe, v, sizeof fe);
            if (fe.flags & KMESH_FRONTEND_LIMITED) {
                kmesh_limit_cfg cfg;
                if (!get(MapId::kLimitCfg, fe.limit_id, &cfg) || cfg.name_hash == 0) {
                    broken = "frontend names unwritten limit " + std::to_string(fe.limit_id);
                    return false;
                }
            }
            std::vector<uint32_t> services{fe.service_id};
            if (fe.flags & KMESH_FRONTEND_SPLIT) {
                kmesh_split_value sp;
                if (!get(MapId::kSplit, fe.service_id, &sp) || sp.count == 0 || sp.count > KMESH_SPLIT_MAX) {
                    broken = "frontend points at missing split " + std::to_string(fe.service_id);
                    return false;
                }
                services.assign(sp.service_id, sp.service_id + sp.count);
            }
            for (uint32_t id : services)
                if (!broken.empty() || !check_service(id, &broken)) return false;
            return true;
        });
        return broken;
    }

    // Every index of one reachable service resolves to a live backend of the right family.
    bool check_service(uint32_t service_id, std::string* broken) const {
        kmesh_service_value svc;
        if (!get(MapId::kService, service_id, &svc)) {
            *broken = "frontend points at missing service " + std::to_string(service_id);
            return false;
        }
        {
            for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
                for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++)
                    for (uint32_t i = 1; i <= svc.endpoint_count[f][p]; i++) {
                        kmesh_endpoint_key ek{service_id, f, p, i};
                        kmesh_endpoint_value ev;
                        kmesh_backend_value bv;
                        if (!get(MapId::kEndpoint, ek, &ev)) {
                            *broken = "count covers missing endpoint index " + std::to_string(i);
                            return false;
                        }
                        if (!get(MapId::kBackend, ev.backend_id, &bv)) {
                            *broken = "endpoint points at missing backend " + std::to_string(ev.backend_id);
                            return false;
                        }
                        // BPF picks from the socket family's list: every entry must serve it.
                        if (!(bv.flags &
                              (f == KMESH_FAMILY_V4 ? KMESH_BACKEND_HAS_V4 : KMESH_BACKEND_HAS_V6))) {
                            *broken = "family list holds backend " + std::to_string(ev.backend_id) +
                                      " without that family";
                            return false;
                        }
                    }
        }
        return true;
    }

    // km_member's contract, over every service (reachable or not): each counted endpoint slot's
    // backend is a member of its service, and a member has a live backend. "" when it holds.
    std::string check_member_invariant() const {
        std::string broken;
        for_each(MapId::kService, [&](const void* k, const void* v) {
            uint32_t id;
            kmesh_service_value svc;
            std::memcpy(&id, k, sizeof id);
            std::memcpy(&svc, v, sizeof svc);
            for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
                for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++)
                    for (uint32_t i = 1; i <= svc.endpoint_count[f][p]; i++) {
                        kmesh_endpoint_value ev;
                        kmesh_member_value mv;
                        if (!get(MapId::kEndpoint, kmesh_endpoint_key{id, f, p, i}, &ev)) continue;
                        if (!get(MapId::kMember, kmesh_member_key{id, ev.backend_id}, &mv)) {
                            broken = "slot of service " + std::to_string(id) + " names backend " +
                                     std::to_string(ev.backend_id) + ", not a member";
                            return false;
                        }
                        if (mv.weight == 0) {
                            broken = "slot of service " + std::to_string(id) + " names draining backend " +
                                     std::to_string(ev.backend_id);
                            return false;
                        }
                    }
            return true;
        });
        if (!broken.empty()) return broken;
        for_each(MapId::kMember, [&](const void* k, const void*) {
            kmesh_member_key mk;
            kmesh_backend_value bv;
            std::memcpy(&mk, k, sizeof mk);
            if (!get(MapId::kBackend, mk.backend_id, &bv)) {
                broken = "member names missing backend " + std::to_string(mk.backend_id);
                return false;
            }
            return true;
        });
        return broken;
    }

    std::vector<std::string> ops;
    std::vector<std::string> batches;  // "put km_endpoint 12": each batch call the writer made
    std::function<void()> after_mutation;

  private:
    static int idx(MapId m) { return static_cast<int>(m); }
    // The shapes of map_ops.cpp's table (sizeof of the ABI structs), as the kernel's maps have.
    static size_t key_size(MapId m) { return map_key_size(m); }
    static size_t value_size(MapId m) { return map_value_size(m); }
    static Bytes bytes(const void* p, size_t n) {
        auto* b = static_cast<const uint8_t*>(p);
        return Bytes(b, b + n);
    }

    std::array<std::map<Bytes, Bytes>, kMapCount> maps_;
    std::array<size_t, kMapCount> capacity_;
    int fail_after_ = -1;
    int fail_remove_after_ = -1;
    std::array<bool, kMapCount> no_batch_{};
};

// What each frontend resolves to, ids aside (a retry may hand out other ids): target port, flags,
// the service's lb mode and flags, and per family and priority the sorted backend entries (address
// bytes and flags) with their member weights; a missing service, slot, backend or member is named
// in the text, so two states compare equal only when both resolve completely and alike.
inline std::map<std::string, std::string> resolved(const FakeMapOps& ops) {
    std::map<std::string, std::string> out;
    ops.for_each(MapId::kFrontend, [&](const void* k, const void* v) {
        kmesh_frontend_value fe;
        std::memcpy(&fe, v, sizeof fe);
        std::string r = std::to_string(fe.target_port) + "/" + std::to_string(fe.flags);
        kmesh_service_value svc{};
        if (!ops.get(MapId::kService, fe.service_id, &svc)) r += " no service";
        r += "/" + std::to_string(svc.lb_mode) + "/" + std::to_string(svc.flags);
        for (uint16_t f = 0; f < KMESH_FAMILY_COUNT; f++)
            for (uint16_t p = 0; p < KMESH_PRIO_COUNT; p++) {
                std::vector<std::string> list;
                for (uint32_t i = 1; i <= svc.endpoint_count[f][p]; i++) {
                    kmesh_endpoint_value ev{};
                    kmesh_backend_value bv{};
                    if (!ops.get(MapId::kEndpoint, kmesh_endpoint_key{fe.service_id, f, p, i}, &ev))
                        r += " missing slot";
                    if (!ops.get(MapId::kBackend, ev.backend_id, &bv)) r += " missing backend";
                    kmesh_member_value mv{};
                    if (!ops.get(MapId::kMember, kmesh_member_key{fe.service_id, ev.backend_id}, &mv))
                        r += " missing member";
                    list.emplace_back(
                        std::string(reinterpret_cast<const char*>(&bv), offsetof(kmesh_backend_value, pad)) +
                        "w" + std::to_string(mv.weight));
                }
                std::sort(list.begin(), list.end());
                r += ";" + std::to_string(f) + "." + std::to_string(p);
                for (const auto& b : list) r += "|" + b;
            }
        out[std::string(static_cast<const char*>(k), sizeof(kmesh_frontend_key))] = r;
        return true;
    });
    return out;
}

}  // namespace kmesh::test
