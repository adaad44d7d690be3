#include "agent/src/model/model.hpp"

#include <mutex>
#include <set>

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
