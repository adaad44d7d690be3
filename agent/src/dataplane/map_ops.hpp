// The kernel-call seam for the xDS-derived maps: the writer talks to MapOps, production uses
// KernelMapOps (bpf syscalls on pinned map fds), unit tests use an in-memory fake.
#pragma once

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace kmesh {

enum class MapId {
    kFrontend = 0,
    kService,
    kEndpoint,
    kBackend,
    kPort,
    // Waypoint redirect (issue 9): waypoint id -> address, destination address -> waypoint id.
    kWaypoint,
    kWaypointDest,
    // Load balancing (issue 10): (service id, backend id) -> weight, while the backend is an endpoint.
    kMember,
    // Kernel-native mode (issue 13): weighted clusters, split id -> services and cumulative weights.
    kSplit,
    // Local rate limits (issue 13): limit id -> bucket config (an ARRAY: "deleting" writes zeros), and
    // the per-(client netns, limit id) buckets BPF makes, which the writer clears when an id is freed.
    kLimitCfg,
    kRateLimit,
};
inline constexpr int kMapCount = 11;

const char* map_name(MapId id);  // the pinned name, e.g. "km_frontend"
size_t map_key_size(MapId id);
size_t map_value_size(MapId id);

class MapOps {
  public:
    virtual ~MapOps() = default;
    // All return 0 or -errno. update() may create or replace (BPF_ANY).
    virtual int update(MapId map, const void* key, const void* value) = 0;
    virtual int remove(MapId map, const void* key) = 0;
    virtual int lookup(MapId map, const void* key, void* value) const = 0;
    // Batches (BPF_MAP_UPDATE_BATCH, BPF_MAP_DELETE_BATCH): n keys (and values) packed back to back,
    // map_key_size()/map_value_size() apart. The kernel works through them in order, exactly as n
    // update()/remove() calls would, and stops at the first that fails: the result is 0, or the
    // -errno of entry *done, with entries [0, *done) done and those after it not tried. A remove of
    // a missing key fails with -ENOENT there too. -EOPNOTSUPP with *done == 0 means this map (or
    // kernel) has no batch operation and nothing was done: the caller goes one entry at a time.
    virtual int update_batch(MapId, const void*, const void*, uint32_t, uint32_t* done) {
        *done = 0;
        return -EOPNOTSUPP;
    }
    virtual int remove_batch(MapId, const void*, uint32_t, uint32_t* done) {
        *done = 0;
        return -EOPNOTSUPP;
    }
    // Visits every entry; fn returns false to stop.
    virtual void for_each(MapId map,
                          const std::function<bool(const void* key, const void* value)>& fn) const = 0;
};

class KernelMapOps : public MapOps {
  public:
    // fds[i] belongs to MapId(i); the caller keeps them open for the lifetime of this object.
    // batch false: update_batch/remove_batch answer -EOPNOTSUPP, so the writer goes one by one.
    explicit KernelMapOps(std::array<int, kMapCount> fds, bool batch = true) : fds_(fds), batch_(batch) {}
    int update(MapId map, const void* key, const void* value) override;
    int remove(MapId map, const void* key) override;
    int lookup(MapId map, const void* key, void* value) const override;
    int update_batch(MapId map, const void* keys, const void* values, uint32_t n, uint32_t* done) override;
    int remove_batch(MapId map, const void* keys, uint32_t n, uint32_t* done) override;
    void for_each(MapId map, const std::function<bool(const void*, const void*)>& fn) const override;

  private:
    std::array<int, kMapCount> fds_;
    bool batch_;
};

// The result of a libbpf batch call (`rc`, errno set) as -errno, where -EOPNOTSUPP means "nothing
// was done and this map or kernel has no batch operation: go one by one" (map_ops.cpp says why).
// Shared with the authorization writer's batches.
int batch_result(int rc, uint32_t done);

}  // namespace kmesh
