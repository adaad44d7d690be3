// The BPF map ABI seen from C++: bpf/kmesh_abi.h plus checks that the host compiler lays every
// struct out exactly as clang -target bpf does (no implicit padding, same offsets).
#pragma once

#include <cstddef>
#include <cstring>
#include <tuple>

#include "bpf/kmesh_abi.h"

static_assert(sizeof(kmesh_frontend_key) == 20);
static_assert(offsetof(kmesh_frontend_key, port) == 16);
static_assert(sizeof(kmesh_frontend_value) == 16);
static_assert(offsetof(kmesh_frontend_value, limit_id) == 8);
static_assert(offsetof(kmesh_frontend_value, target_port) == 4);
static_assert(offsetof(kmesh_frontend_value, flags) == 6);
static_assert(sizeof(kmesh_port_key) == 12);
static_assert(offsetof(kmesh_port_key, service_port) == 8);
static_assert(sizeof(kmesh_port_value) == 4);
static_assert(sizeof(kmesh_service_value) == 80);
static_assert(offsetof(kmesh_service_value, endpoint_count[1][0]) == 28);
static_assert(offsetof(kmesh_service_value, lb_mode) == 56);
static_assert(offsetof(kmesh_service_value, flags) == 60);
static_assert(offsetof(kmesh_service_value, name_hash) == 64);
static_assert(offsetof(kmesh_service_value, affinity_timeout) == 72);
static_assert(sizeof(kmesh_endpoint_key) == 12);
static_assert(offsetof(kmesh_endpoint_key, family) == 4);
static_assert(offsetof(kmesh_endpoint_key, prio) == 6);
static_assert(offsetof(kmesh_endpoint_key, index) == 8);
static_assert(sizeof(kmesh_endpoint_value) == 4);
static_assert(sizeof(kmesh_backend_value) == 48);
static_assert(offsetof(kmesh_backend_value, addr6) == 16);
static_assert(offsetof(kmesh_backend_value, flags) == 32);
static_assert(offsetof(kmesh_backend_value, port) == 36);
static_assert(offsetof(kmesh_backend_value, name_hash) == 40);
static_assert(sizeof(kmesh_split_value) == 144);
static_assert(offsetof(kmesh_split_value, name_hash) == 136);
static_assert(offsetof(kmesh_service_value, max_connections) == 76);
static_assert(sizeof(kmesh_cb_key) == 16);
static_assert(sizeof(kmesh_native_sk) == 24);
static_assert(sizeof(kmesh_limit_cfg) == 32);
static_assert(offsetof(kmesh_limit_cfg, name_hash) == 24);
static_assert(sizeof(kmesh_ratelimit_key) == 16);
static_assert(sizeof(kmesh_ratelimit_value) == 24);
static_assert(offsetof(kmesh_split_value, cum_weight) == 72);

// Load balancing section (issue 10).
static_assert(sizeof(kmesh_member_key) == 8);
static_assert(sizeof(kmesh_member_value) == 8);
static_assert(sizeof(kmesh_affinity_key) == 16);
static_assert(offsetof(kmesh_affinity_key, service_id) == 8);
static_assert(sizeof(kmesh_affinity_value) == 16);
static_assert(offsetof(kmesh_affinity_value, backend_id) == 8);

// UDP and address transparency (issue 10 section 1).
static_assert(sizeof(kmesh_udp_rev_slot) == 56);
static_assert(offsetof(kmesh_udp_rev_slot, vip_addr) == 16);
static_assert(offsetof(kmesh_udp_rev_slot, backend_name_hash) == 32);
static_assert(offsetof(kmesh_udp_rev_slot, service_id) == 40);
static_assert(offsetof(kmesh_udp_rev_slot, backend_id) == 44);
static_assert(offsetof(kmesh_udp_rev_slot, backend_port) == 48);
static_assert(offsetof(kmesh_udp_rev_slot, vip_port) == 50);
static_assert(sizeof(kmesh_udp_rev_value) == 56 * KMESH_UDP_REV_SLOTS + 8);
static_assert(offsetof(kmesh_udp_rev_value, used) == 56 * KMESH_UDP_REV_SLOTS);
static_assert(sizeof(kmesh_sock_peer) == 40);
static_assert(offsetof(kmesh_sock_peer, backend_addr) == 16);
static_assert(offsetof(kmesh_sock_peer, vip_port) == 32);
static_assert(offsetof(kmesh_sock_peer, flags) == 36);

// authz (issue 9)
static_assert(sizeof(kmesh_authz_config) == 8);
static_assert(sizeof(kmesh_authz_ident_value) == 4);
static_assert(sizeof(kmesh_authz_dst_key) == 20);
static_assert(offsetof(kmesh_authz_dst_key, addr) == 4);
static_assert(sizeof(kmesh_authz_dst_value) == 4);
static_assert(sizeof(kmesh_authz_set_value) == 16);
static_assert(sizeof(kmesh_authz_setpol_value) == 4);
static_assert(sizeof(kmesh_authz_policy_value) == 16);
static_assert(offsetof(kmesh_authz_policy_value, slot) == 8);
static_assert(sizeof(kmesh_authz_row_value) == 8);
static_assert(sizeof(kmesh_authz_idset_key) == 12);
static_assert(sizeof(kmesh_authz_cidr_key) == 24);
static_assert(offsetof(kmesh_authz_cidr_key, match) == 4);
static_assert(offsetof(kmesh_authz_cidr_key, addr) == 8);
static_assert(sizeof(kmesh_authz_port_key) == 8);
static_assert(offsetof(kmesh_authz_port_key, port) == 4);
static_assert(sizeof(kmesh_authz_present) == 4);
static_assert(sizeof(kmesh_authz_cache_key) == 36);
static_assert(offsetof(kmesh_authz_cache_key, port) == 32);
static_assert(sizeof(kmesh_authz_cache_value) == 24);
static_assert(offsetof(kmesh_authz_cache_value, dry) == 16);
// Waypoint section.
static_assert(sizeof(kmesh_waypoint_value) == 40);
static_assert(offsetof(kmesh_waypoint_value, addr6) == 16);
static_assert(offsetof(kmesh_waypoint_value, flags) == 32);
static_assert(offsetof(kmesh_waypoint_value, port) == 36);
static_assert(offsetof(kmesh_waypoint_value, lookup_port) == 38);
static_assert(sizeof(kmesh_wp_dest_key) == 16);
static_assert(sizeof(kmesh_wp_dest_value) == 16);
static_assert(offsetof(kmesh_wp_dest_value, kind) == 8);
static_assert(sizeof(kmesh_wp_sock) == 32);
static_assert(offsetof(kmesh_wp_sock, orig_addr) == 8);
static_assert(offsetof(kmesh_wp_sock, orig_port) == 24);
static_assert(offsetof(kmesh_wp_sock, state) == 26);
static_assert(offsetof(kmesh_wp_sock, v4) == 27);
static_assert(KMESH_TLV_V4_SIZE == 1 + 4 + 4 + 2 + 1 + 4);
static_assert(KMESH_TLV_V6_SIZE == 1 + 4 + 16 + 2 + 1 + 4);
// Same-node sockmap acceleration section (issue 10 section 3).
static_assert(sizeof(kmesh_accel_key) == 36);
static_assert(offsetof(kmesh_accel_key, remote) == 16);
static_assert(offsetof(kmesh_accel_key, local_port) == 32);
static_assert(offsetof(kmesh_accel_key, remote_port) == 34);
static_assert(sizeof(kmesh_accel_sock) == 8);
// Telemetry (issue 11): ring buffer records and the per-connection socket storage.
static_assert(sizeof(kmesh_conn_event) == 104);
static_assert(offsetof(kmesh_conn_event, local_addr) == 40);
static_assert(offsetof(kmesh_conn_event, orig_addr) == 72);
static_assert(offsetof(kmesh_conn_event, local_port) == 88);
static_assert(offsetof(kmesh_conn_event, type) == 94);
static_assert(offsetof(kmesh_conn_event, flags) == 96);
static_assert(offsetof(kmesh_conn_event, reason) == 100);
static_assert(sizeof(kmesh_conn) == 48);
static_assert(offsetof(kmesh_conn, orig_port) == 40);
static_assert(offsetof(kmesh_conn, flags) == 44);
static_assert(sizeof(kmesh_tel_config) == 8);

inline bool operator<(const kmesh_wp_dest_key& a, const kmesh_wp_dest_key& b) {
    return std::memcmp(&a, &b, sizeof a) < 0;
}
inline bool operator==(const kmesh_wp_dest_key& a, const kmesh_wp_dest_key& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}
inline bool operator==(const kmesh_wp_dest_value& a, const kmesh_wp_dest_value& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}
inline bool operator==(const kmesh_waypoint_value& a, const kmesh_waypoint_value& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

inline bool operator<(const kmesh_frontend_key& a, const kmesh_frontend_key& b) {
    return std::memcmp(&a, &b, sizeof a) < 0;
}
inline bool operator==(const kmesh_frontend_key& a, const kmesh_frontend_key& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}
inline bool operator==(const kmesh_frontend_value& a, const kmesh_frontend_value& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}
inline bool operator==(const kmesh_backend_value& a, const kmesh_backend_value& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}
