#include "agent/src/dataplane/native_state.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace kmesh {

using native::FilterChain;
using native::Hcm;
using native::NativeCla;
using native::NativeCluster;
using native::NativeListener;
using native::NativeRoute;
using native::Target;
using native::TcpProxy;

std::string native_backend_name(const IpAddr& a, uint16_t port) {
    return a.is_v4() ? fmt::format("endpoint/{}:{}", a.str(), port)
                     : fmt::format("endpoint/[{}]:{}", a.str(), port);
}

std::string native_limit_name(const std::string& listener, const std::string& chain) {
    return "limit/" + listener + "/" + chain;
}

void NativeState::upsert(NativeListener l) {
    std::string name = l.name;
    listeners_.insert_or_assign(std::move(name), std::move(l));
    changed();
}
void NativeState::upsert(NativeRoute r) {
    std::string name = r.name;
    routes_.insert_or_assign(std::move(name), std::move(r));
    changed();
}
void NativeState::upsert(NativeCluster c) {
    std::string name = c.name;
    clusters_.insert_or_assign(std::move(name), std::move(c));
    changed();
}
void NativeState::upsert(NativeCla c) {
    std::string name = c.cluster_name;
    clas_.insert_or_assign(std::move(name), std::move(c));
    changed();
}
void NativeState::remove_listener(const std::string& name) {
    if (listeners_.erase(name)) changed();
}
void NativeState::remove_route(const std::string& name) {
    if (routes_.erase(name)) changed();
}
void NativeState::remove_cluster(const std::string& name) {
    if (clusters_.erase(name)) changed();
}
void NativeState::remove_cla(const std::string& name) {
    if (clas_.erase(name)) changed();
}

std::vector<std::string> NativeState::eds_names() const {
    std::set<std::string> names;
    for (const auto& [n, c] : clusters_)
        if (c.type == native::ClusterType::kEds && !c.unsupported)
            names.insert(c.eds_name.empty() ? n : c.eds_name);
    return {names.begin(), names.end()};
}

std::vector<std::string> NativeState::rds_names() const {
    std::set<std::string> names;
    auto add = [&](const FilterChain& fc) {
        if (const Hcm* h = std::get_if<Hcm>(&fc.terminal); h && !h->rds.empty()) names.insert(h->rds);
    };
    for (const auto& [n, l] : listeners_) {
        for (const auto& fc : l.chains) add(fc);
        if (l.default_chain) add(*l.default_chain);
    }
    return {names.begin(), names.end()};
}

Dirty NativeState::take_dirty() {
    if (stale_) rebuild();
    Dirty d;
    if (std::exchange(dirty_, false)) {
        d.all = true;
        d.native = true;
    }
    return d;
}

namespace {

// The mapping's working state during one rebuild.
struct Build {
    const std::map<std::string, NativeCluster>& clusters;
    const std::map<std::string, NativeRoute>& routes;
    DesiredState& out;
    NativeStats& stats;
    std::set<std::string> ready;  // clusters programmed with their endpoints (warm)

    void unsupported(const std::string& reason) { stats.unsupported[reason]++; }
};

uint16_t clamp_prio(uint32_t p) { return static_cast<uint16_t>(std::min<uint32_t>(p, KMESH_PRIO_COUNT - 1)); }

// One cluster -> one service and its backends. Returns whether it is warm (has its endpoints).
bool build_cluster(Build& b, const NativeCluster& c, const std::map<std::string, NativeCla>& clas) {
    if (c.unsupported) {
        b.unsupported(std::string(native::unsupported_name(c.unsupported->reason)));
        return false;
    }
    const NativeCla* cla = nullptr;
    if (c.type == native::ClusterType::kStatic) {
        if (c.load_assignment) cla = &*c.load_assignment;
    } else if (auto it = clas.find(c.eds_name.empty() ? c.name : c.eds_name); it != clas.end()) {
        cla = &it->second;
    }
    uint64_t hs = name_hash(c.name);
    DesiredService ds;
    // LEAST_REQUEST (istiod's default) needs the kernel's active-connection counts, which are not
    // there yet: balanced at random meanwhile, and counted so that operators can see it.
    ds.lb_mode = KMESH_LB_RANDOM;
    if (c.lb == native::LbPolicy::kRoundRobin) ds.flags |= KMESH_SERVICE_ROUND_ROBIN;
    if (c.lb == native::LbPolicy::kLeastRequest) b.stats.least_request_as_random++;
    if (c.max_connections) {
        ds.flags |= KMESH_SERVICE_MAX_CONN;
        ds.max_connections = *c.max_connections;
    }
    bool failover = false;
    if (cla)
        for (const auto& loc : cla->localities)
            for (const auto& ep : loc.endpoints) {
                // Envoy sends traffic to HEALTHY and UNKNOWN (no health checking) hosts; DEGRADED
                // only when too few are healthy, which we do not model: left out with the others.
                if (ep.health != native::Health::kHealthy && ep.health != native::Health::kUnknown) continue;
                uint64_t hb = name_hash(native_backend_name(ep.address, ep.port));
                DesiredBackend be;
                uint32_t family = ep.address.is_v4() ? KMESH_FAMILY_V4 : KMESH_FAMILY_V6;
                if (family == KMESH_FAMILY_V4) {
                    be.addr4 = ep.address.bytes;
                    be.flags = KMESH_BACKEND_HAS_V4;
                } else {
                    be.addr6 = ep.address.bytes;
                    be.flags = KMESH_BACKEND_HAS_V6;
                }
                be.flags |= KMESH_BACKEND_HAS_PORT;
                be.port = htons(ep.port);
                b.out.backends[hb] = be;
                uint16_t prio = clamp_prio(loc.priority);
                failover |= prio > 0;
                DesiredMember& m = ds.members[hb];
                // The same address:port twice (two localities): the first (highest priority) wins.
                if (m.families == 0) {
                    m.weight = std::max<uint32_t>(ep.weight, 1);
                    m.prio = static_cast<uint8_t>(prio);
                    m.families = static_cast<uint8_t>(1u << family);
                }
            }
    if (failover) ds.lb_mode = KMESH_LB_FAILOVER;
    b.out.services[hs] = std::move(ds);
    return cla != nullptr;
}

// Where a target leads, as a frontend: the cluster's service, or a split. Nullopt when a cluster
// is not programmed (unsupported, unknown) or still warming.
std::optional<FrontendTarget> resolve_target(Build& b, const Target& t, bool* warming) {
    // Weights of a cluster named twice add up (Envoy would pick either entry).
    std::map<std::string, uint32_t> merged;
    std::vector<std::string> order;
    for (const auto& wc : t.clusters) {
        if (!merged.count(wc.cluster)) order.push_back(wc.cluster);
        merged[wc.cluster] += wc.weight;
    }
    for (const auto& name : order) {
        auto c = b.clusters.find(name);
        if (c == b.clusters.end()) {
            *warming = true;  // CDS comes before LDS; a cluster yet to come is warming
            return std::nullopt;
        }
        if (c->second.unsupported) {
            b.unsupported("cluster_unsupported");
            return std::nullopt;
        }
        if (!b.ready.count(name)) {
            *warming = true;
            return std::nullopt;
        }
    }
    FrontendTarget ft;
    ft.flags = KMESH_FRONTEND_BACKEND_PORT;
    if (order.size() == 1) {
        ft.service = name_hash(order[0]);
        return ft;
    }
    if (order.size() > KMESH_SPLIT_MAX) {
        b.unsupported("split_too_wide");
        return std::nullopt;
    }
    DesiredSplit split;
    for (const auto& name : order) split.services.emplace_back(name_hash(name), merged[name]);
    uint64_t hsplit = name_hash(split_name(split));
    b.out.splits[hsplit] = std::move(split);
    ft.service = hsplit;
    ft.flags |= KMESH_FRONTEND_SPLIT;
    return ft;
}

bool domain_matches(const std::string& domain, const std::string& addr, uint16_t port) {
    if (domain == addr) return true;
    std::string p = ":" + std::to_string(port);
    return domain.size() > p.size() && domain.compare(domain.size() - p.size(), p.size(), p) == 0 &&
           domain.substr(0, domain.size() - p.size()) == addr;
}

// The IP literal a vhost domain names ("10.96.0.10", "10.96.0.10:80", "[fd00::10]", "[fd00::10]:80"),
// when its port (if any) is `port`.
std::optional<IpAddr> domain_address(const std::string& domain, uint16_t port) {
    std::string host = domain;
    if (!host.empty() && host[0] == '[') {
        auto close = host.find(']');
        if (close == std::string::npos) return std::nullopt;
        std::string rest = host.substr(close + 1);
        if (!rest.empty() && rest != ":" + std::to_string(port)) return std::nullopt;
        host = host.substr(1, close - 1);
    } else if (auto colon = host.find(':');
               colon != std::string::npos && host.find(':', colon + 1) == std::string::npos) {
        if (host.substr(colon + 1) != std::to_string(port)) return std::nullopt;
        host = host.substr(0, colon);
    }
    auto a = IpAddr::parse(host);
    if (!a || a->is_unspecified() || a->is_loopback() || a->is_multicast()) return std::nullopt;
    return a;
}

struct RoutePick {
    std::optional<Target> target;
    bool approximated = false;
    std::string why;  // when no target: the unsupported reason
};

// What a virtual host's routes do for a connection, decided without the request: exact when the
// first route matches everything or every route leads to the same place; else the first
// catch-all route, approximated.
RoutePick pick_route(const native::VirtualHost& vh) {
    RoutePick p;
    if (vh.routes.empty()) {
        p.why = "no_route";
        return p;
    }
    const auto& first = vh.routes.front();
    if (first.catch_all) {
        if (first.target)
            p.target = first.target;
        else
            p.why = first.unsupported ? std::string(native::unsupported_name(first.unsupported->reason))
                                      : "no_route";
        return p;
    }
    bool same = true;
    for (const auto& r : vh.routes) same &= r.target.has_value() && r.target == first.target;
    if (same) {
        p.target = first.target;
        return p;
    }
    for (const auto& r : vh.routes)
        if (r.catch_all) {
            if (r.target) {
                p.target = r.target;
                p.approximated = true;
            } else {
                p.why =
                    r.unsupported ? std::string(native::unsupported_name(r.unsupported->reason)) : "no_route";
            }
            return p;
        }
    p.why = "no_catch_all";
    return p;
}

const native::VirtualHost* find_vhost(const NativeRoute& r, const std::string& addr, uint16_t port) {
    for (const auto& vh : r.vhosts)
        for (const auto& d : vh.domains)
            if (domain_matches(d, addr, port)) return &vh;
    for (const auto& vh : r.vhosts)
        for (const auto& d : vh.domains)
            if (d == "*") return &vh;
    return nullptr;
}

const NativeRoute* route_of(Build& b, const Hcm& h) {
    if (h.inline_route) return &*h.inline_route;
    auto it = b.routes.find(h.rds);
    return it == b.routes.end() ? nullptr : &it->second;
}

bool chain_matches(const FilterChain& fc, const IpAddr& addr, uint16_t port) {
    if (fc.destination_port && *fc.destination_port != port) return false;
    if (fc.prefixes.empty()) return true;
    for (const auto& p : fc.prefixes)
        if (p.addr == addr) return true;
    return false;
}

kmesh_frontend_key frontend_key(const IpAddr& a, uint16_t port) {
    kmesh_frontend_key fk{};
    std::memcpy(fk.addr, a.bytes.data(), 16);
    fk.port = htons(port);
    return fk;
}

}  // namespace

void NativeState::rebuild() {
    DesiredState prev = std::exchange(desired_, DesiredState{});
    stats_ = NativeStats{};
    Build b{clusters_, routes_, desired_, stats_, {}};
    for (const auto& [name, c] : clusters_)
        if (build_cluster(b, c, clas_)) b.ready.insert(name);
    for (const auto& [name, l] : listeners_) {
        if (l.unsupported) b.unsupported(std::string(native::unsupported_name(l.unsupported->reason)));
        for (const auto& s : l.skipped_chains) b.unsupported(std::string(native::unsupported_name(s.reason)));
    }

    // Frontends: VIP listeners first, so that `<vip>_<port>` wins over a wildcard listener's
    // virtual host naming the same VIP (Envoy matches the most specific listener address).
    std::vector<const NativeListener*> order;
    for (const auto& [name, l] : listeners_)
        if (!l.unsupported && !l.address.is_unspecified()) order.push_back(&l);
    for (const auto& [name, l] : listeners_)
        if (!l.unsupported && l.address.is_unspecified()) order.push_back(&l);

    std::set<uint16_t> warming_ports;      // network order: wildcard listeners waiting for a route
    std::set<kmesh_frontend_key> decided;  // written, or deliberately left (warming, unsupported)
    // A frontend whose new target is still warming keeps its previous target, and with it what
    // that reaches (services, backends, split, bucket) where the new state no longer has them:
    // make before break, as Envoy keeps serving a listener until its replacement is warm.
    auto carry = [&](const DesiredState& old, const kmesh_frontend_key& fk) {
        auto fe = old.frontends.find(fk);
        if (fe == old.frontends.end()) return;
        const FrontendTarget& ft = fe->second;
        std::vector<uint64_t> services;
        if (ft.flags & KMESH_FRONTEND_SPLIT) {
            auto sp = old.splits.find(ft.service);
            if (sp == old.splits.end()) return;
            for (const auto& [hs, w] : sp->second.services) services.push_back(hs);
            desired_.splits.emplace(sp->first, sp->second);
        } else {
            services.push_back(ft.service);
        }
        for (uint64_t hs : services) {
            auto os = old.services.find(hs);
            if (os == old.services.end() || desired_.services.count(hs)) continue;
            DesiredService ds = os->second;
            ds.frontends.clear();
            for (const auto& [hb, m] : ds.members)
                if (auto ob = old.backends.find(hb); ob != old.backends.end())
                    desired_.backends.emplace(hb, ob->second);
            desired_.services.emplace(hs, std::move(ds));
        }
        if (ft.flags & KMESH_FRONTEND_LIMITED)
            if (auto ol = old.limits.find(ft.limit); ol != old.limits.end())
                desired_.limits.emplace(ol->first, ol->second);
        desired_.frontends[fk] = ft;
        if (!(ft.flags & KMESH_FRONTEND_SPLIT)) desired_.services.at(ft.service).frontends[fk] = ft;
    };
    auto chain_name = [](const NativeListener& l, const FilterChain& fc) {
        if (!fc.name.empty()) return fc.name;
        for (size_t i = 0; i < l.chains.size(); i++)
            if (&l.chains[i] == &fc) return std::to_string(i);
        return std::string("default");
    };
    // Publishes (addr, port) -> target of chain fc (or records why not). No target while the
    // route is warming (`route_warming`): the key keeps its previous target.
    auto publish = [&](const NativeListener& l, const FilterChain& fc, const IpAddr& addr,
                       const std::optional<Target>& target, bool approximated, bool route_warming = false) {
        kmesh_frontend_key fk = frontend_key(addr, l.port);
        if (!decided.insert(fk).second) return;
        if (!target) {
            if (route_warming) carry(prev, fk);
            return;
        }
        bool warming = false;
        auto ft = resolve_target(b, *target, &warming);
        if (!ft) {
            if (warming) {
                stats_.warming++;
                carry(prev, fk);
            }
            return;
        }
        if (approximated) stats_.routes_approximated++;
        ft->target_port = htons(l.port);
        if (fc.rate_limit) {
            uint64_t hl = name_hash(native_limit_name(l.name, chain_name(l, fc)));
            desired_.limits[hl] = DesiredLimit{fc.rate_limit->max_tokens, fc.rate_limit->tokens_per_fill,
                                               fc.rate_limit->fill_interval_ns};
            ft->flags |= KMESH_FRONTEND_LIMITED;
            ft->limit = hl;
        }
        desired_.frontends[fk] = *ft;
        if (!(ft->flags & KMESH_FRONTEND_SPLIT)) desired_.services.at(ft->service).frontends[fk] = *ft;
    };
    // An HTTP chain's decision for one destination address.
    auto http_pick = [&](const Hcm& h, const IpAddr& addr, uint16_t port, bool* warming) -> RoutePick {
        RoutePick none;
        const NativeRoute* r = route_of(b, h);
        if (!r) {
            *warming = true;
            return none;
        }
        const native::VirtualHost* vh = find_vhost(*r, addr.str(), port);
        if (!vh) {
            none.why = "no_route";
            return none;
        }
        return pick_route(*vh);
    };

    for (const NativeListener* lp : order) {
        const NativeListener& l = *lp;
        if (!l.address.is_unspecified()) {
            // `<vip>_<port>`: the chains that match this destination; a sniffed port has an HTTP
            // chain (application_protocols) and a TCP one. The HTTP route is used when it decides
            // without the request, else the TCP chain (what a client that is not HTTP gets).
            const FilterChain* tcp = nullptr;
            const FilterChain* http = nullptr;
            for (const auto& fc : l.chains) {
                if (!chain_matches(fc, l.address, l.port)) continue;
                if (!fc.application_protocols.empty() || std::holds_alternative<Hcm>(fc.terminal)) {
                    if (!http) http = &fc;
                } else if (!tcp) {
                    tcp = &fc;
                }
            }
            if (!tcp && !http && l.default_chain) tcp = &*l.default_chain;
            RoutePick hp;
            bool warming = false;
            if (http) {
                if (const Hcm* h = std::get_if<Hcm>(&http->terminal))
                    hp = http_pick(*h, l.address, l.port, &warming);
                else
                    hp.target = std::get<TcpProxy>(http->terminal).target;
            }
            if (http && !hp.target && warming) {
                // The HTTP chain's route is not here yet: keep what the key had rather than
                // fall back to the TCP chain meanwhile (make before break).
                stats_.warming++;
                publish(l, *http, l.address, std::nullopt, false, true);
            } else if (http && hp.target && (!hp.approximated || !tcp)) {
                publish(l, *http, l.address, hp.target, hp.approximated);
            } else if (tcp) {
                if (const TcpProxy* t = std::get_if<TcpProxy>(&tcp->terminal)) {
                    publish(l, *tcp, l.address, t->target, false);
                } else {
                    RoutePick tp = http_pick(std::get<Hcm>(tcp->terminal), l.address, l.port, &warming);
                    if (warming && !tp.target)
                        stats_.warming++;
                    else if (!tp.target)
                        b.unsupported(tp.why);
                    publish(l, *tcp, l.address, tp.target, tp.approximated, warming);
                }
            } else if (warming) {
                stats_.warming++;
                if (decided.insert(frontend_key(l.address, l.port)).second)
                    carry(prev, frontend_key(l.address, l.port));
            } else if (http) {
                b.unsupported(hp.why.empty() ? "no_route" : hp.why);
                decided.insert(frontend_key(l.address, l.port));
            }
            continue;
        }
        // `0.0.0.0_<port>`: chains matched on single destination addresses give those addresses;
        // an HTTP chain for any address gives the IP literals of its route's virtual hosts.
        for (const auto& fc : l.chains) {
            if (!fc.destination_port || *fc.destination_port == l.port) {
                for (const auto& p : fc.prefixes) {
                    std::optional<Target> t;
                    bool approximated = false, warming = false;
                    if (const TcpProxy* tp = std::get_if<TcpProxy>(&fc.terminal)) {
                        t = tp->target;
                    } else {
                        RoutePick rp = http_pick(std::get<Hcm>(fc.terminal), p.addr, l.port, &warming);
                        if (warming)
                            stats_.warming++;
                        else if (!rp.target)
                            b.unsupported(rp.why);
                        t = rp.target;
                        approximated = rp.approximated;
                    }
                    publish(l, fc, p.addr, t, approximated, warming);
                }
                if (!fc.prefixes.empty()) continue;
                if (const Hcm* h = std::get_if<Hcm>(&fc.terminal)) {
                    const NativeRoute* r = route_of(b, *h);
                    if (!r) {
                        stats_.warming++;
                        warming_ports.insert(htons(l.port));
                        continue;
                    }
                    for (const auto& vh : r->vhosts)
                        for (const auto& d : vh.domains) {
                            auto addr = domain_address(d, l.port);
                            if (!addr) continue;
                            RoutePick rp = pick_route(vh);
                            if (!rp.target) b.unsupported(rp.why);
                            publish(l, fc, *addr, rp.target, rp.approximated);
                        }
                } else {
                    // tcp_proxy for every address of the port: connect() would have to take every
                    // destination of the port, which is not a service; left alone.
                    b.unsupported("wildcard_tcp_proxy");
                }
            }
        }
    }
    // A wildcard listener whose route has not arrived: the VIPs of its port it held keep their
    // targets (the route will say which VIPs it has; until then nothing is taken away).
    for (const auto& [fk, ft] : prev.frontends)
        if (warming_ports.count(fk.port) && decided.insert(fk).second) carry(prev, fk);
    stats_.frontends = desired_.frontends.size();
    stats_.splits = desired_.splits.size();
    stats_.limits = desired_.limits.size();
    stats_.services = desired_.services.size();
    stats_.backends = desired_.backends.size();
    stale_ = false;
}

}  // namespace kmesh
