// Informer<T>: LIST, then WATCH from the list's resourceVersion, into a local cache; every change
// of the cache is delivered once and in order. The cache is the single source of what was
// delivered: a watch event is compared with it (an ADDED for a known object at the same
// resourceVersion is a replay and dropped; a MODIFIED for an unknown one is an add), and a relist
// delivers exactly the difference between the cache and the new list.
#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/kube/api.hpp"
#include "common/kube/json_util.hpp"

namespace kmesh::kube {

namespace {

std::optional<uint64_t> as_number(const std::string& rv) {
    if (rv.empty() || rv.size() > 19) return std::nullopt;
    uint64_t v = 0;
    for (char c : rv) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + static_cast<uint64_t>(c - '0');
    }
    return v;
}

// True when both are numeric and `event_rv` <= `position`.
bool not_newer(const std::string& event_rv, const std::string& position) {
    auto e = as_number(event_rv), p = as_number(position);
    return e && p && *e <= *p;
}

Result<List<Pod>> list_of(Api& api, const ListOptions& o, const Pod*) { return api.list_pods(o); }
Result<List<Namespace>> list_of(Api& api, const ListOptions& o, const Namespace*) {
    return api.list_namespaces(o);
}
Status watch_of(Api& api, const ListOptions& o, const std::string& rv, int t, const WatchHandler<Pod>& h,
                const std::atomic<bool>& stop) {
    return api.watch_pods(o, rv, t, h, stop);
}
Status watch_of(Api& api, const ListOptions& o, const std::string& rv, int t,
                const WatchHandler<Namespace>& h, const std::atomic<bool>& stop) {
    return api.watch_namespaces(o, rv, t, h, stop);
}

}  // namespace

template <class T>
struct Informer<T>::Impl {
    Api& api;
    Options options;
    ChangeFn on_change;
    SyncedFn on_synced;
    ErrorFn on_error;

    mutable std::mutex mu;  // guards cache (read by snapshot() from other threads)
    std::map<std::string, T> cache;
    std::atomic<bool> stop{false};
    std::atomic<bool> synced{false};
    std::mutex wait_mu;
    std::condition_variable wait_cv;
    std::thread thread;
    std::string rv;  // where the next WATCH resumes (informer thread only)

    Impl(Api& a, Options o, ChangeFn c, SyncedFn s, ErrorFn e)
        : api(a),
          options(std::move(o)),
          on_change(std::move(c)),
          on_synced(std::move(s)),
          on_error(std::move(e)) {}

    void deliver(const T* old_obj, const T* new_obj) {
        if (on_change) on_change(old_obj, new_obj);
    }

    // Applies one object as now existing; delivers an add or a modification when it differs.
    void upsert(T obj) {
        std::string key = detail::object_key(obj.meta);
        std::unique_lock lock(mu);
        auto it = cache.find(key);
        if (it == cache.end()) {
            auto [ins, ok] = cache.emplace(key, std::move(obj));
            (void)ok;
            const T& added = ins->second;
            lock.unlock();
            deliver(nullptr, &added);  // cache entries are stable: only this thread mutates
            return;
        }
        if (it->second.meta.resource_version == obj.meta.resource_version) return;  // seen already
        T old = std::move(it->second);
        it->second = std::move(obj);
        const T& now = it->second;
        lock.unlock();
        deliver(&old, &now);
    }

    void remove(const std::string& key) {
        std::unique_lock lock(mu);
        auto it = cache.find(key);
        if (it == cache.end()) return;
        T old = std::move(it->second);
        cache.erase(it);
        lock.unlock();
        deliver(&old, nullptr);
    }

    Status relist() {
        auto r = list_of(api, options.list, static_cast<const T*>(nullptr));
        if (!r) return r.status();
        std::map<std::string, T> fresh;
        for (T& obj : r->items) {
            std::string key = detail::object_key(obj.meta);
            fresh.emplace(std::move(key), std::move(obj));
        }
        std::vector<std::string> gone;
        {
            std::lock_guard lock(mu);
            for (const auto& [key, obj] : cache)
                if (!fresh.count(key)) gone.push_back(key);
        }
        for (const auto& key : gone) remove(key);
        for (auto& [key, obj] : fresh) upsert(std::move(obj));
        rv = r->resource_version;
        synced = true;
        if (on_synced) on_synced();
        return {};
    }

    Status watch_once(bool* got_event) {
        WatchHandler<T> handler = [&](const WatchEvent<T>& ev) {
            *got_event = true;
            // A server may re-send changes at or before the position the watch asked for (a
            // restarted watch cache, a proxy replaying a stream). resourceVersions are opaque to
            // clients in general, but every API server backed by etcd uses the etcd revision, a
            // number that only grows: when both are numbers, an event not newer than the position
            // already applied is a replay and is dropped (otherwise the cache check below still
            // drops a replay of the object's current state).
            if (ev.type != EventType::kBookmark && not_newer(ev.object.meta.resource_version, rv))
                return !stop.load();
            switch (ev.type) {
                case EventType::kAdded:
                case EventType::kModified:
                    upsert(ev.object);
                    break;
                case EventType::kDeleted:
                    remove(detail::object_key(ev.object.meta));
                    break;
                case EventType::kBookmark:
                    break;
            }
            if (!ev.object.meta.resource_version.empty()) rv = ev.object.meta.resource_version;
            return !stop.load();
        };
        return watch_of(api, options.list, rv, options.watch_timeout_seconds, handler, stop);
    }

    // Sleeps `d` unless stopped first.
    void sleep_for(std::chrono::milliseconds d) {
        std::unique_lock lock(wait_mu);
        wait_cv.wait_for(lock, d, [&] { return stop.load(); });
    }

    void report(const Status& s) {
        if (on_error) on_error(s);
    }

    void run() {
        auto backoff = options.backoff_initial;
        auto grow = [&] { backoff = std::min(options.backoff_max, backoff * 2); };
        bool need_list = true;
        while (!stop.load()) {
            if (need_list) {
                Status s = relist();
                if (stop.load()) break;
                if (!s) {
                    report(s);
                    sleep_for(backoff);
                    grow();
                    continue;
                }
                need_list = false;
            }
            bool got_event = false;
            Status s = watch_once(&got_event);
            if (stop.load()) break;
            if (s.is_ok()) {  // the server ended a healthy watch: resume at once
                backoff = options.backoff_initial;
                continue;
            }
            report(s);
            if (s.code() == Errc::kGone) {
                need_list = true;  // client-go relists at once on 410
                continue;
            }
            if (got_event) backoff = options.backoff_initial;  // it was healthy before it broke
            sleep_for(backoff);
            grow();
        }
    }
};

template <class T>
Informer<T>::Informer(Api& api, Options options, ChangeFn on_change, SyncedFn on_synced, ErrorFn on_error)
    : impl_(std::make_unique<Impl>(api, std::move(options), std::move(on_change), std::move(on_synced),
                                   std::move(on_error))) {}

template <class T>
Informer<T>::~Informer() {
    stop();
}

template <class T>
void Informer<T>::start() {
    if (impl_->thread.joinable()) return;
    impl_->stop = false;
    impl_->thread = std::thread([this] { impl_->run(); });
}

template <class T>
void Informer<T>::stop() {
    {
        std::lock_guard lock(impl_->wait_mu);
        impl_->stop = true;
    }
    impl_->wait_cv.notify_all();
    if (!impl_->thread.joinable()) return;
    if (impl_->thread.get_id() == std::this_thread::get_id()) {
        impl_->thread.detach();  // stop() from a callback: the loop ends when the callback returns
        return;
    }
    impl_->thread.join();
}

template <class T>
bool Informer<T>::synced() const {
    return impl_->synced.load();
}

template <class T>
std::map<std::string, T> Informer<T>::snapshot() const {
    std::lock_guard lock(impl_->mu);
    return impl_->cache;
}

template <class T>
std::optional<T> Informer<T>::get(const std::string& key) const {
    std::lock_guard lock(impl_->mu);
    auto it = impl_->cache.find(key);
    if (it == impl_->cache.end()) return std::nullopt;
    return it->second;
}

template class Informer<Pod>;
template class Informer<Namespace>;

}  // namespace kmesh::kube
