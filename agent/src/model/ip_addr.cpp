#include "agent/src/model/ip_addr.hpp"

#include <arpa/inet.h>

#include <cstring>

namespace kmesh {

namespace {
constexpr std::array<uint8_t, 12> kV4MappedPrefix{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
}

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
    std::string s(text);
    IpAddr a;
    in_addr v4{};
    if (inet_pton(AF_INET, s.c_str(), &v4) == 1) {
        std::memcpy(a.bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size());
        std::memcpy(a.bytes.data() + 12, &v4, 4);
        return a;
    }
    if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) return a;
    return std::nullopt;
}

std::optional<IpAddr> IpAddr::from_raw(std::string_view raw) {
    IpAddr a;
    if (raw.size() == 4) {
        std::memcpy(a.bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size());
        std::memcpy(a.bytes.data() + 12, raw.data(), 4);
        return a;
    }
    if (raw.size() == 16) {
        std::memcpy(a.bytes.data(), raw.data(), 16);
        return a;
    }
    return std::nullopt;
}

bool IpAddr::is_v4() const { return std::memcmp(bytes.data(), kV4MappedPrefix.data(), 12) == 0; }

bool IpAddr::is_unspecified() const {
    static const std::array<uint8_t, 16> zero{};
    return (is_v4() && bytes[12] == 0 && bytes[13] == 0 && bytes[14] == 0 && bytes[15] == 0) || bytes == zero;
}

bool IpAddr::is_loopback() const {
    static const std::array<uint8_t, 16> one{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return (is_v4() && bytes[12] == 127) || bytes == one;
}

bool IpAddr::is_multicast() const { return is_v4() ? (bytes[12] & 0xf0) == 0xe0 : bytes[0] == 0xff; }

std::string IpAddr::str() const {
    char buf[INET6_ADDRSTRLEN];
    if (is_v4()) return inet_ntop(AF_INET, bytes.data() + 12, buf, sizeof buf);
    return inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf);
}

}  // namespace kmesh
