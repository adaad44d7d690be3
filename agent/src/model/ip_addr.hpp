// A 16-byte IP address as the map ABI stores it: IPv4 is kept IPv4-mapped (::ffff:a.b.c.d).
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kmesh {

struct IpAddr {
    std::array<uint8_t, 16> bytes{};

    static std::optional<IpAddr> parse(std::string_view text);
    // From raw bytes as the workload API sends them: 4 (IPv4) or 16 (IPv6) bytes.
    static std::optional<IpAddr> from_raw(std::string_view raw);

    bool is_v4() const;
    bool is_unspecified() const;  // 0.0.0.0 or ::
    bool is_loopback() const;     // 127/8 or ::1
    bool is_multicast() const;    // 224/4 or ff00::/8
    std::string str() const;
    auto operator<=>(const IpAddr&) const = default;
};

}  // namespace kmesh
