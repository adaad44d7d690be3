#include "agent/src/model/model.hpp"

#include <mutex>
#include <set>
#include <string_view>
#include <unordered_map>

namespace kmesh {

namespace {

// Interned values live for the process: there are as many as distinct nodes and waypoints.
template <typename T>
const T* intern_in(std::set<T>& pool, std::mutex& mu, T value) {
    std::lock_guard lock(mu);
    return &*pool.insert(std::move(value)).first;
}

}  // namespace

const Placement* Placement::intern(Placement p) {
    static std::set<Placement> pool;
    static std::mutex mu;
    return intern_in(pool, mu, std::move(p));
}

const WorkloadNaming* WorkloadNaming::intern(WorkloadNaming n) {
    static std::set<WorkloadNaming> pool;
    static std::mutex mu;
    return intern_in(pool, mu, std::move(n));
}

const Waypoint* Waypoint::intern(Waypoint w) {
    static std::set<Waypoint> pool;
    static std::mutex mu;
    return intern_in(pool, mu, std::move(w));
}

}  // namespace kmesh

namespace kmesh {

namespace {

// The pool outlives every holder (model objects in statics included): it is never destroyed.
struct InternPool {
    std::mutex mu;
    // Keys view the entries' own strings.
    std::unordered_map<std::string_view, void*> entries;
};

InternPool& intern_pool() {
    static auto* pool = new InternPool;
    return *pool;
}

}  // namespace

InternedString::Entry* InternedString::intern(std::string_view s) {
    if (s.empty()) return nullptr;
    InternPool& pool = intern_pool();
    std::lock_guard lock(pool.mu);
    if (auto it = pool.entries.find(s); it != pool.entries.end()) {
        auto* e = static_cast<Entry*>(it->second);
        e->refs.fetch_add(1, std::memory_order_relaxed);
        return e;
    }
    auto* e = new Entry;
    e->s.assign(s);
    e->refs.store(1, std::memory_order_relaxed);
    pool.entries.emplace(std::string_view(e->s), e);
    return e;
}

void InternedString::release_last(Entry* e) {
    InternPool& pool = intern_pool();
    std::lock_guard lock(pool.mu);
    // intern() may have taken a new reference since the caller saw 1.
    if (e->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    pool.entries.erase(std::string_view(e->s));
    delete e;
}

const std::string& InternedString::empty_string() {
    static const std::string* empty = new std::string;
    return *empty;
}

size_t InternedString::pool_size() {
    InternPool& pool = intern_pool();
    std::lock_guard lock(pool.mu);
    return pool.entries.size();
}

}  // namespace kmesh
