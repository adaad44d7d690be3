#include "agent/src/policy/authz_writer.hpp"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/src/dataplane/map_ops.hpp"

namespace kmesh::policy {

namespace {

struct Shape {
    const char* name;
    size_t key_size;
    size_t value_size;
};

constexpr std::array<Shape, kAuthzMapCount> kShapes{{
    {"km_authz_config", 4, sizeof(kmesh_authz_config)},
    {"km_authz_ident", 16, sizeof(kmesh_authz_ident_value)},
    {"km_authz_dst", sizeof(kmesh_authz_dst_key), sizeof(kmesh_authz_dst_value)},
    {"km_authz_set", 4, sizeof(kmesh_authz_set_value)},
    {"km_authz_setpol", 4, sizeof(kmesh_authz_setpol_value)},
    {"km_authz_policy", 4, sizeof(kmesh_authz_policy_value)},
    {"km_authz_row", 4, sizeof(kmesh_authz_row_value)},
    {"km_authz_idset", sizeof(kmesh_authz_idset_key), sizeof(kmesh_authz_present)},
    {"km_authz_cidr", sizeof(kmesh_authz_cidr_key), sizeof(kmesh_authz_present)},
    {"km_authz_port", sizeof(kmesh_authz_port_key), sizeof(kmesh_authz_present)},
    {"km_authz_cache", sizeof(kmesh_authz_cache_key), sizeof(kmesh_authz_cache_value)},
    {"km_authz_hits", 4, 8},
    {"km_authz_totals", 4, 8},
}};

int idx(AuthzMap m) { return static_cast<int>(m); }
int result(int rc) { return rc < 0 ? -errno : 0; }

kmesh_authz_dst_key dst_key(unsigned gen, const IpAddr& a) {
    kmesh_authz_dst_key k{};
    k.gen = gen;
    std::memcpy(k.addr, a.bytes.data(), 16);
    return k;
}

kmesh_authz_cidr_key cidr_key(unsigned gen, const CidrEntry& e) {
    kmesh_authz_cidr_key k{};
    k.prefixlen = 32u + e.prefix_len;
    k.match = KMESH_AUTHZ_MATCH_ID(gen, e.row, e.kind) | (e.addr.is_v4() ? 0u : KMESH_AUTHZ_CIDR_V6);
    std::memcpy(k.addr, e.addr.bytes.data(), 16);
    return k;
}

kmesh_authz_port_key port_key(unsigned gen, const PortEntry& e) {
    kmesh_authz_port_key k{};
    k.match = KMESH_AUTHZ_MATCH_ID(gen, e.row, e.kind);
    k.port = e.port;
    return k;
}

kmesh_authz_idset_key idset_key(unsigned gen, const std::pair<uint32_t, uint32_t>& e) {
    return {gen, e.first, e.second};
}

IpAddr addr_of(const uint8_t* p) {
    IpAddr a;
    std::memcpy(a.bytes.data(), p, 16);
    return a;
}

template <typename T>
bool same(const T& a, const T& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

template <typename T>
bool same_vec(const std::vector<T>& a, const std::vector<T>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++)
        if (!same(a[i], b[i])) return false;
    return true;
}

bool same_tables(const AuthzGeneration& a, const AuthzGeneration& b) {
    return a.arrays_known && b.arrays_known && same_vec(a.sets, b.sets) && same_vec(a.setpol, b.setpol) &&
           same_vec(a.policies, b.policies) && same_vec(a.rows, b.rows) && a.dsts == b.dsts &&
           a.idset == b.idset && a.cidrs == b.cidrs && a.ports == b.ports;
}

}  // namespace

const char* authz_map_name(AuthzMap m) { return kShapes[idx(m)].name; }
size_t authz_key_size(AuthzMap m) { return kShapes[idx(m)].key_size; }
size_t authz_value_size(AuthzMap m) { return kShapes[idx(m)].value_size; }

KernelAuthzMapOps::KernelAuthzMapOps(std::array<int, kAuthzMapCount> fds) : fds_(fds) {
    ncpus_ = libbpf_num_possible_cpus();
    if (ncpus_ < 1) ncpus_ = 1;
}

int KernelAuthzMapOps::update(AuthzMap map, const void* key, const void* value) {
    return result(bpf_map_update_elem(fds_[idx(map)], key, value, BPF_ANY));
}

int KernelAuthzMapOps::remove(AuthzMap map, const void* key) {
    return result(bpf_map_delete_elem(fds_[idx(map)], key));
}

int KernelAuthzMapOps::update_batch(AuthzMap map, const void* keys, const void* values, uint32_t n,
                                    uint32_t* done) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts, .elem_flags = BPF_ANY);
    uint32_t count = n;
    int rc = bpf_map_update_batch(fds_[idx(map)], keys, values, &count, &opts);
    *done = rc < 0 ? std::min(count, n) : n;
    return batch_result(rc, *done);
}

int KernelAuthzMapOps::remove_batch(AuthzMap map, const void* keys, uint32_t n, uint32_t* done) {
    LIBBPF_OPTS(bpf_map_batch_opts, opts);
    uint32_t count = n;
    int rc = bpf_map_delete_batch(fds_[idx(map)], keys, &count, &opts);
    *done = rc < 0 ? std::min(count, n) : n;
    return batch_result(rc, *done);
}

int KernelAuthzMapOps::lookup(AuthzMap map, const void* key, void* value) const {
    return result(bpf_map_lookup_elem(fds_[idx(map)], key, value));
}

void KernelAuthzMapOps::for_each_key(AuthzMap map, const std::function<bool(const void*)>& fn) const {
    size_t ks = kShapes[idx(map)].key_size;
    std::vector<uint8_t> key(ks), next(ks);
    const void* prev = nullptr;
    // Keys are collected first: the visitor may delete, and get_next_key after a delete of the
    // current key restarts from the beginning on hash maps.
    std::vector<std::vector<uint8_t>> keys;
    while (bpf_map_get_next_key(fds_[idx(map)], prev, next.data()) == 0) {
        key.swap(next);
        prev = key.data();
        keys.push_back(key);
    }
    for (const auto& k : keys)
        if (!fn(k.data())) return;
}

int KernelAuthzMapOps::percpu_sum(AuthzMap map, uint32_t index, uint64_t* sum) const {
    std::vector<uint64_t> values(static_cast<size_t>(ncpus_));
    if (int rc = result(bpf_map_lookup_elem(fds_[idx(map)], &index, values.data()))) return rc;
    *sum = 0;
    for (auto v : values) *sum += v;
    return 0;
}

int KernelAuthzMapOps::percpu_zero(AuthzMap map, uint32_t index) {
    std::vector<uint64_t> values(static_cast<size_t>(ncpus_), 0);
    return result(bpf_map_update_elem(fds_[idx(map)], &index, values.data(), BPF_ANY));
}

Status AuthzWriter::fail(AuthzMap map, int err, const std::string& what) {
    bool full = err == -E2BIG || err == -ENOSPC || err == -ENOMEM;
    if (full) stats_.map_full++;
    return {full ? Errc::kResourceExhausted : Errc::kIo,
            fmt::format("{} {}: {}{}", authz_map_name(map), what, std::strerror(-err),
                        full ? " (the map is full: raise its --max-authz-* flag)" : "")};
}

uint32_t AuthzWriter::slot_of(const std::string& key) const {
    std::lock_guard lock(slots_mu_);
    auto it = slots_.find(key);
    return it == slots_.end() ? KMESH_AUTHZ_NO_SLOT : it->second;
}

AuthzGeneration AuthzWriter::desired(const CompiledAuthz& c) const {
    const AuthzTables& t = c.tables;
    AuthzGeneration g;
    g.arrays_known = true;
    for (const auto& s : t.sets) g.sets.push_back({s.first, s.count, s.flags, 0});
    for (uint32_t p : t.setpol) g.setpol.push_back({p});
    for (const auto& p : t.policies) g.policies.push_back({p.first_row, p.rows, slots_.at(p.key), p.flags});
    for (const auto& r : t.rows) g.rows.push_back({r.idset, r.flags});
    g.dsts = t.dsts;
    g.idset = t.idset;
    g.cidrs = t.cidrs;
    g.ports = t.ports;
    return g;
}

Status AuthzWriter::write_state(uint64_t state) {
    uint32_t zero = 0;
    kmesh_authz_config cfg{state};
    if (int err = ops_.update(AuthzMap::kConfig, &zero, &cfg))
        return fail(AuthzMap::kConfig, err, "update state");
    state_ = state;
    return {};
}

Status AuthzWriter::write_generation(unsigned g, const AuthzGeneration& want) {
    AuthzGeneration& have = gens_[g];
    const bool known = have.arrays_known;
    have.arrays_known = false;  // exact again only once every array entry below went through
    auto arrays = [&](AuthzMap map, auto& mirror, const auto& wanted, uint32_t per_gen) -> Status {
        for (size_t i = 0; i < wanted.size(); i++) {
            if (known && i < mirror.size() && same(mirror[i], wanted[i])) continue;
            uint32_t key = g * per_gen + static_cast<uint32_t>(i);
            if (int err = ops_.update(map, &key, &wanted[i]))
                return fail(map, err, fmt::format("update [{}]", key));
        }
        mirror = wanted;
        return {};
    };
    // Hash entries: deletions first (they make room), then additions; the mirror follows each write.
    auto hashes = [&](AuthzMap map, auto& mirror, const auto& wanted, auto key_of) -> Status {
        for (auto it = mirror.begin(); it != mirror.end();) {
            if (wanted.count(*it)) {
                ++it;
                continue;
            }
            auto k = key_of(*it);
            int err = ops_.remove(map, &k);
            if (err && err != -ENOENT) return fail(map, err, "delete");
            it = mirror.erase(it);
        }
        kmesh_authz_present one{1, {}};
        for (const auto& e : wanted) {
            if (mirror.count(e)) continue;
            auto k = key_of(e);
            if (int err = ops_.update(map, &k, &one)) return fail(map, err, "update");
            mirror.insert(e);
        }
        return {};
    };
    // Order inside the inactive generation does not matter to the kernel (it reads only the
    // active one); failures leave the mirror exact for the next attempt.
    Status st =
        hashes(AuthzMap::kIdSet, have.idset, want.idset, [g](const auto& e) { return idset_key(g, e); });
    if (st)
        st = hashes(AuthzMap::kCidr, have.cidrs, want.cidrs, [g](const auto& e) { return cidr_key(g, e); });
    if (st)
        st = hashes(AuthzMap::kPort, have.ports, want.ports, [g](const auto& e) { return port_key(g, e); });
    if (st) st = arrays(AuthzMap::kRow, have.rows, want.rows, sizes_.rows);
    if (st) st = arrays(AuthzMap::kPolicy, have.policies, want.policies, sizes_.policies);
    if (st) st = arrays(AuthzMap::kSetPol, have.setpol, want.setpol, sizes_.setpol);
    if (st) st = arrays(AuthzMap::kSet, have.sets, want.sets, sizes_.sets);
    if (!st) return st;
    for (auto it = have.dsts.begin(); it != have.dsts.end();) {
        auto w = want.dsts.find(it->first);
        if (w != want.dsts.end()) {
            ++it;
            continue;
        }
        auto k = dst_key(g, it->first);
        int err = ops_.remove(AuthzMap::kDst, &k);
        if (err && err != -ENOENT) return fail(AuthzMap::kDst, err, "delete");
        it = have.dsts.erase(it);
    }
    for (const auto& [addr, set] : want.dsts) {
        auto h = have.dsts.find(addr);
        if (h != have.dsts.end() && h->second == set) continue;
        auto k = dst_key(g, addr);
        kmesh_authz_dst_value v{set};
        if (int err = ops_.update(AuthzMap::kDst, &k, &v)) return fail(AuthzMap::kDst, err, "update");
        have.dsts[addr] = set;
    }
    have.arrays_known = true;
    return {};
}

Status AuthzWriter::publish(const CompiledAuthz& c, const PublishHint* hint) {
    if (hint && !exact_)
        return {Errc::kInternal, "authz: an incremental publish needs a completed publish before it"};
    exact_ = false;  // until this publish completes
    const bool tables = !hint || hint->tables;
    // 1. Counter slots: stable per policy key; a new key's counters start at zero.
    if (tables) {
        std::lock_guard lock(slots_mu_);
        std::set<uint32_t> used;
        for (const auto& [k, s] : slots_) used.insert(s);
        uint32_t next = 0;
        for (const auto& key : c.policy_keys) {
            if (slots_.count(key)) continue;
            while (used.count(next)) next++;
            if (next >= sizes_.policies) {
                stats_.failures++;
                return {Errc::kResourceExhausted,
                        fmt::format("no counter slot left for policy {} (--max-authz-policies {})", key,
                                    sizes_.policies)};
            }
            for (uint32_t h = 0; h < KMESH_AUTHZ_HIT_COUNT; h++)
                if (int err = ops_.percpu_zero(AuthzMap::kHits, next * KMESH_AUTHZ_HIT_COUNT + h)) {
                    stats_.failures++;
                    return fail(AuthzMap::kHits, err, "zero counters");
                }
            slots_[key] = next;
            used.insert(next);
        }
    }
    // 2 + 3. Only when the tables differ from what the kernel reads now (with a hint that says they
    // did not change, the active generation is already equal to them: the last publish completed).
    if (tables) {
        AuthzGeneration want = desired(c);
        const unsigned active = static_cast<unsigned>(state_ & 1), target = active ^ 1;
        if (!same_tables(gens_[active], want)) {
            if (Status st = write_generation(target, want); !st) {
                stats_.failures++;
                return st;
            }
            if (Status st = write_state((((state_ >> 1) + 1) << 1) | target); !st) {
                stats_.failures++;
                return st;
            }
            stats_.publishes++;
        }
    }
    // The kernel's tables now give these ids their meaning, whatever happens to the address map
    // below: the next compile must keep them (and never reuse one).
    if (!hint || hint->identities) identities_ = c.identities;
    next_identity_ = std::max(next_identity_, c.next_identity);
    recovered_ = false;

    // 4. Address -> identity, after the tables that know every new identity id. Deletions first
    // (they make room), then additions and changes.
    bool changed = false;
    std::vector<IpAddr> gone;
    std::vector<std::pair<IpAddr, uint32_t>> puts;
    if (hint && hint->idents) {
        for (const auto& [addr, id] : *hint->idents) {
            auto h = idents_.find(addr);
            if (id == 0 && h != idents_.end()) gone.push_back(addr);
            if (id != 0 && (h == idents_.end() || h->second != id)) puts.emplace_back(addr, id);
        }
    } else {
        // One walk over both (sorted alike) instead of a lookup per address: 100k at a full push.
        auto h = idents_.begin();
        for (const auto& [addr, id] : c.addr_identity) {
            for (; h != idents_.end() && h->first < addr; ++h) gone.push_back(h->first);
            if (h != idents_.end() && h->first == addr) {
                if (h->second != id) puts.emplace_back(addr, id);
                ++h;
            } else {
                puts.emplace_back(addr, id);
            }
        }
        for (; h != idents_.end(); ++h) gone.push_back(h->first);
    }
    if (Status st = remove_idents(gone, &changed); !st) {
        stats_.failures++;
        return st;
    }
    Status ident_status = put_idents(puts, &changed);
    if (changed) {
        // Verdicts cached with the old identities must not be used again.
        if (Status st = write_state(state_ + 2); !st) ident_status = st;
        stats_.identity_updates++;
    }
    if (!ident_status) {
        stats_.failures++;
        return ident_status;
    }
    // 5. Slots of policies gone from the model.
    if (tables) {
        std::lock_guard lock(slots_mu_);
        std::set<std::string> keep(c.policy_keys.begin(), c.policy_keys.end());
        for (auto it = slots_.begin(); it != slots_.end();)
            it = keep.count(it->first) ? std::next(it) : slots_.erase(it);
    }
    exact_ = true;
    return {};
}

Status AuthzWriter::remove_idents(const std::vector<IpAddr>& addrs, bool* changed) {
    size_t i = 0;
    if (!no_ident_batch_ && addrs.size() > 1) {
        std::vector<uint8_t> keys;
        while (i < addrs.size()) {
            uint32_t n = static_cast<uint32_t>(std::min<size_t>(addrs.size() - i, 8192));
            keys.resize(size_t{n} * 16);
            for (uint32_t j = 0; j < n; j++)
                std::memcpy(keys.data() + size_t{j} * 16, addrs[i + j].bytes.data(), 16);
            uint32_t done = 0;
            int err = ops_.remove_batch(AuthzMap::kIdent, keys.data(), n, &done);
            for (uint32_t j = 0; j < done; j++) idents_.erase(addrs[i + j]);
            if (done) *changed = true;
            i += done;
            if (err == -EOPNOTSUPP) {
                no_ident_batch_ = true;
                break;
            }
            if (err == -ENOENT) break;  // gone already: the rest one by one, which tolerates it
            if (err) return fail(AuthzMap::kIdent, err, "delete");
        }
    }
    for (; i < addrs.size(); i++) {
        int err = ops_.remove(AuthzMap::kIdent, addrs[i].bytes.data());
        if (err && err != -ENOENT) return fail(AuthzMap::kIdent, err, "delete");
        idents_.erase(addrs[i]);
        *changed = true;
    }
    return {};
}

Status AuthzWriter::put_idents(const std::vector<std::pair<IpAddr, uint32_t>>& puts, bool* changed) {
    size_t i = 0;
    if (!no_ident_batch_ && puts.size() > 1) {
        std::vector<uint8_t> keys;
        std::vector<kmesh_authz_ident_value> values;
        while (i < puts.size()) {
            uint32_t n = static_cast<uint32_t>(std::min<size_t>(puts.size() - i, 8192));
            keys.resize(size_t{n} * 16);
            values.resize(n);
            for (uint32_t j = 0; j < n; j++) {
                std::memcpy(keys.data() + size_t{j} * 16, puts[i + j].first.bytes.data(), 16);
                values[j] = {puts[i + j].second};
            }
            uint32_t done = 0;
            int err = ops_.update_batch(AuthzMap::kIdent, keys.data(), values.data(), n, &done);
            for (uint32_t j = 0; j < done; j++) idents_[puts[i + j].first] = puts[i + j].second;
            if (done) *changed = true;
            i += done;
            if (err == -EOPNOTSUPP) {
                no_ident_batch_ = true;
                break;
            }
            if (err) return fail(AuthzMap::kIdent, err, "update");
        }
    }
    for (; i < puts.size(); i++) {
        kmesh_authz_ident_value v{puts[i].second};
        if (int err = ops_.update(AuthzMap::kIdent, puts[i].first.bytes.data(), &v))
            return fail(AuthzMap::kIdent, err, "update");
        idents_[puts[i].first] = puts[i].second;
        *changed = true;
    }
    return {};
}

Status AuthzWriter::recover() {
    uint32_t zero = 0;
    kmesh_authz_config cfg{};
    if (int err = ops_.lookup(AuthzMap::kConfig, &zero, &cfg))
        return fail(AuthzMap::kConfig, err, "read state");
    state_ = cfg.state;
    const unsigned active = static_cast<unsigned>(state_ & 1);
    gens_ = {};
    idents_.clear();
    exact_ = false;
    ops_.for_each_key(AuthzMap::kIdent, [&](const void* k) {
        kmesh_authz_ident_value v{};
        if (ops_.lookup(AuthzMap::kIdent, k, &v) == 0)
            idents_[addr_of(static_cast<const uint8_t*>(k))] = v.identity;
        return true;
    });
    // The active generation's hash entries are learnt (the next publish diffs against them); the
    // inactive one's are deleted, since nothing says what they are.
    std::vector<std::vector<uint8_t>> stale;
    auto collect = [&](AuthzMap map, auto learn) {
        ops_.for_each_key(map, [&](const void* k) {
            if (!learn(k)) {
                const auto* p = static_cast<const uint8_t*>(k);
                stale.emplace_back(p, p + authz_key_size(map));
            }
            return true;
        });
        for (const auto& k : stale)
            if (int err = ops_.remove(map, k.data()); err && err != -ENOENT) return fail(map, err, "delete");
        stale.clear();
        return Status{};
    };
    AuthzGeneration& g = gens_[active];
    Status st = collect(AuthzMap::kDst, [&](const void* k) {
        kmesh_authz_dst_key key;
        std::memcpy(&key, k, sizeof key);
        kmesh_authz_dst_value v{};
        if (key.gen != active || ops_.lookup(AuthzMap::kDst, &key, &v)) return false;
        g.dsts[addr_of(key.addr)] = v.set;
        return true;
    });
    if (st)
        st = collect(AuthzMap::kIdSet, [&](const void* k) {
            kmesh_authz_idset_key key;
            std::memcpy(&key, k, sizeof key);
            if (key.gen != active) return false;
            g.idset.emplace(key.idset, key.identity);
            return true;
        });
    auto match_parts = [](uint32_t match, uint32_t* row, uint32_t* kind) {
        *row = (match & ~((1u << 31) | KMESH_AUTHZ_CIDR_V6)) >> 2;
        *kind = match & 3;
        return match >> 31;
    };
    if (st)
        st = collect(AuthzMap::kCidr, [&](const void* k) {
            kmesh_authz_cidr_key key;
            std::memcpy(&key, k, sizeof key);
            CidrEntry e;
            if (match_parts(key.match, &e.row, &e.kind) != active || key.prefixlen < 32) return false;
            e.addr = addr_of(key.addr);
            e.prefix_len = static_cast<uint8_t>(key.prefixlen - 32);
            g.cidrs.insert(e);
            return true;
        });
    if (st)
        st = collect(AuthzMap::kPort, [&](const void* k) {
            kmesh_authz_port_key key;
            std::memcpy(&key, k, sizeof key);
            PortEntry e;
            if (match_parts(key.match, &e.row, &e.kind) != active) return false;
            e.port = key.port;
            g.ports.insert(e);
            return true;
        });
    // Which identity an id stands for is not in the kernel; the next compile joins the address map
    // back to the model's identities (IdentityIds::addr_ids). No id in use is handed out again.
    identities_.clear();
    recovered_ = true;
    for (const auto& [addr, id] : idents_) next_identity_ = std::max(next_identity_, id + 1);
    for (const auto& [set, id] : g.idset) next_identity_ = std::max(next_identity_, id + 1);
    return st;
}

IdentityIds AuthzWriter::identities() const {
    IdentityIds ids(identities_);
    if (recovered_) ids.addr_ids = idents_;
    ids.next = next_identity_;
    return ids;
}

AuthzReport AuthzWriter::report() const {
    AuthzReport r;
    std::map<std::string, uint32_t> slots;
    {
        std::lock_guard lock(slots_mu_);
        slots = slots_;
    }
    for (const auto& [key, slot] : slots) {
        uint64_t v[KMESH_AUTHZ_HIT_COUNT] = {};
        for (uint32_t h = 0; h < KMESH_AUTHZ_HIT_COUNT; h++)
            if (ops_.percpu_sum(AuthzMap::kHits, slot * KMESH_AUTHZ_HIT_COUNT + h, &v[h])) v[h] = 0;
        r.policies[key] = {v[KMESH_AUTHZ_HIT_MATCHED], v[KMESH_AUTHZ_HIT_DRY_RUN], v[KMESH_AUTHZ_HIT_CLOSED]};
    }
    uint64_t t[KMESH_AUTHZ_TOTAL_COUNT] = {};
    for (uint32_t i = 0; i < KMESH_AUTHZ_TOTAL_COUNT; i++)
        if (ops_.percpu_sum(AuthzMap::kTotals, i, &t[i])) t[i] = 0;
    r.totals = {t[KMESH_AUTHZ_TOTAL_ALLOWED], t[KMESH_AUTHZ_TOTAL_DENIED_POLICY],
                t[KMESH_AUTHZ_TOTAL_DENIED_NO_ALLOW], t[KMESH_AUTHZ_TOTAL_CLOSED],
                t[KMESH_AUTHZ_TOTAL_CACHE_HITS]};
    return r;
}

}  // namespace kmesh::policy
