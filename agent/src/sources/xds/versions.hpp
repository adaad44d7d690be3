// The version of each resource the agent holds (sent back to istiod on reconnect), by the model's
// 64-bit name hash. Versions that are 16 lowercase hex digits (a 64-bit hash, as our fake istiod
// and hash-versioning servers send) are kept as the 8 bytes they spell; any other string is kept
// as it is. 110k resources: ~40 bytes an entry instead of ~90 (a node with a std::string and the
// 17-byte heap block of its text). The hex versions sit in an open-addressing table (absl's
// flat_hash_map: 16 bytes a slot, no node): a full push inserted 110k std::unordered_map nodes, one
// malloc each, ~6% of the xDS thread's resource loop (docs/benchmarks.md, "fifth pass").
#pragma once

#include <absl/container/flat_hash_map.h>

#include <cstdint>
#include <optional>
#include <string>

namespace kmesh::xds {

class VersionTable {
  public:
    void set(uint64_t name, const std::string& version) {
        if (auto packed = pack(version)) {
            if (!other_.empty()) other_.erase(name);
            hex_[name] = *packed;
        } else {
            hex_.erase(name);
            other_[name] = version;
        }
    }
    void erase(uint64_t name) {
        hex_.erase(name);
        other_.erase(name);
    }
    std::optional<std::string> get(uint64_t name) const {
        if (auto it = hex_.find(name); it != hex_.end()) return unpack(it->second);
        if (auto it = other_.find(name); it != other_.end()) return it->second;
        return std::nullopt;
    }
    size_t size() const { return hex_.size() + other_.size(); }
    // Room for `n` hex versions: a full push of 110k otherwise rehashes the table ~17 times.
    void reserve(size_t n) { hex_.reserve(n); }

    // Exactly 16 lowercase hex digits, so that unpack() gives the same text back.
    static std::optional<uint64_t> pack(const std::string& v) {
        if (v.size() != 16) return std::nullopt;
        uint64_t x = 0;
        for (char c : v) {
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
            if (d < 0) return std::nullopt;
            x = x << 4 | static_cast<uint64_t>(d);
        }
        return x;
    }
    static std::string unpack(uint64_t x) {
        std::string s(16, '0');
        for (int i = 15; i >= 0; i--, x >>= 4) s[static_cast<size_t>(i)] = "0123456789abcdef"[x & 15];
        return s;
    }

  private:
    absl::flat_hash_map<uint64_t, uint64_t> hex_;
    absl::flat_hash_map<uint64_t, std::string> other_;
};

}  // namespace kmesh::xds
