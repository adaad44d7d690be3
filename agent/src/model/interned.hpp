// Strings the model repeats across many workloads (namespace, trust domain, service account, the
// service keys a workload lists) held once per distinct value: an InternedString is a pointer to a
// shared, reference-counted entry. 100k workloads in 10k services name ~10k distinct service keys
// and a few hundred namespaces and service accounts; as std::string each copy was 32 bytes inline
// plus a heap block for the longer ones (service keys: ~50 bytes).
//
// Reference-counted rather than never freed: service keys and namespaces come and go with the
// mesh (preview environments, renamed services), and an agent runs for months, so a pool that
// only grows would grow with churn, not with the mesh. An entry goes when its last holder does.
//
// Equal contents are the same entry, so equality is a pointer compare; ordering compares the
// contents (so sorted containers order as they did with std::string). The empty string is the
// null entry. Thread-safe: the pool is locked on intern and on the release of what may be the last
// reference; copies only touch an atomic counter.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <string_view>

namespace kmesh {

class InternedString {
  public:
    InternedString() = default;
    // Implicit from literals (designated initializers in tests, `w.namespace_ = "x"`); explicit
    // from std::string so that `cond ? std::string : InternedString` stays unambiguous.
    InternedString(const char* s) : InternedString(std::string_view(s)) {}  // NOLINT
    explicit InternedString(std::string_view s) : e_(intern(s)) {}
    explicit InternedString(const std::string& s) : InternedString(std::string_view(s)) {}
    InternedString(const InternedString& o) noexcept : e_(o.e_) { retain(e_); }
    InternedString(InternedString&& o) noexcept : e_(o.e_) { o.e_ = nullptr; }
    ~InternedString() { release(e_); }
    InternedString& operator=(const InternedString& o) noexcept {
        retain(o.e_);  // first: o may be *this
        release(e_);
        e_ = o.e_;
        return *this;
    }
    InternedString& operator=(InternedString&& o) noexcept {
        if (this != &o) {
            release(e_);
            e_ = o.e_;
            o.e_ = nullptr;
        }
        return *this;
    }
    InternedString& operator=(std::string_view s) { return *this = InternedString(s); }
    InternedString& operator=(const std::string& s) { return *this = InternedString(s); }
    InternedString& operator=(const char* s) { return *this = InternedString(s); }

    const std::string& str() const { return e_ ? e_->s : empty_string(); }
    operator const std::string&() const { return str(); }  // NOLINT: reads as the string it is
    std::string_view view() const { return str(); }
    const char* c_str() const { return str().c_str(); }
    const char* data() const { return str().data(); }
    size_t size() const { return e_ ? e_->s.size() : 0; }
    bool empty() const { return e_ == nullptr; }
    size_t find(char c, size_t pos = 0) const { return str().find(c, pos); }
    size_t find(std::string_view s, size_t pos = 0) const { return str().find(s, pos); }
    size_t rfind(char c, size_t pos = std::string::npos) const { return str().rfind(c, pos); }
    std::string substr(size_t pos, size_t n = std::string::npos) const { return str().substr(pos, n); }
    bool starts_with(std::string_view p) const { return view().starts_with(p); }
    auto begin() const { return str().begin(); }
    auto end() const { return str().end(); }

    friend bool operator==(const InternedString& a, const InternedString& b) { return a.e_ == b.e_; }
    friend bool operator==(const InternedString& a, const std::string& b) { return a.view() == b; }
    friend bool operator==(const InternedString& a, std::string_view b) { return a.view() == b; }
    friend bool operator==(const InternedString& a, const char* b) { return a.view() == b; }
    friend std::strong_ordering operator<=>(const InternedString& a, const InternedString& b) {
        if (a.e_ == b.e_) return std::strong_ordering::equal;
        return a.view() <=> b.view();
    }
    friend std::strong_ordering operator<=>(const InternedString& a, const std::string& b) {
        return a.view() <=> std::string_view(b);
    }
    friend std::strong_ordering operator<=>(const InternedString& a, std::string_view b) {
        return a.view() <=> b;
    }
    friend std::strong_ordering operator<=>(const InternedString& a, const char* b) {
        return a.view() <=> std::string_view(b);
    }

    friend std::string operator+(const InternedString& a, const InternedString& b) {
        return a.str() + b.str();
    }
    friend std::string operator+(const InternedString& a, const std::string& b) { return a.str() + b; }
    friend std::string operator+(const std::string& a, const InternedString& b) { return a + b.str(); }
    friend std::string operator+(std::string&& a, const InternedString& b) { return std::move(a) + b.str(); }
    friend std::string operator+(const InternedString& a, const char* b) { return a.str() + b; }
    friend std::string operator+(const char* a, const InternedString& b) { return a + b.str(); }
    friend std::string operator+(const InternedString& a, char b) { return a.str() + b; }
    friend std::string operator+(char a, const InternedString& b) { return a + b.str(); }
    friend std::ostream& operator<<(std::ostream& os, const InternedString& s) { return os << s.str(); }

    // Distinct strings currently interned (tests and the admin's memory figures).
    static size_t pool_size();
    // Holders of this string, including this one (tests).
    uint32_t refs() const { return e_ ? e_->refs.load(std::memory_order_relaxed) : 0; }

  private:
    struct Entry {
        std::atomic<uint32_t> refs{0};
        std::string s;
    };
    static Entry* intern(std::string_view s);
    static void retain(Entry* e) {
        if (e) e->refs.fetch_add(1, std::memory_order_relaxed);
    }
    static void release(Entry* e) {
        if (!e) return;
        // Above one, another holder keeps the entry alive whatever happens concurrently; the last
        // reference is dropped under the pool's lock, so that intern() cannot revive an entry
        // that is being freed.
        uint32_t n = e->refs.load(std::memory_order_relaxed);
        while (n > 1)
            if (e->refs.compare_exchange_weak(n, n - 1, std::memory_order_acq_rel)) return;
        release_last(e);
    }
    static void release_last(Entry* e);
    static const std::string& empty_string();

    Entry* e_ = nullptr;
};

}  // namespace kmesh

template <>
struct std::hash<kmesh::InternedString> {
    size_t operator()(const kmesh::InternedString& s) const noexcept {
        return std::hash<std::string_view>{}(s.view());
    }
};

template <>
struct fmt::formatter<kmesh::InternedString> : fmt::formatter<std::string_view> {
    template <typename Ctx>
    auto format(const kmesh::InternedString& s, Ctx& ctx) const {
        return fmt::formatter<std::string_view>::format(s.view(), ctx);
    }
};
