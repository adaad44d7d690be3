// The kube client and Informer against fake_apiserver.py over real TLS (run_client_tests.sh starts
// the server and exports KUBE_FAKE_DIR / KUBE_FAKE_URL). The oracle for every watch/informer test
// is the server's own record of what it changed (GET /_control/log), not the client's code.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <curl/curl.h>
#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "common/kube/api.hpp"

using namespace kmesh;
using namespace kmesh::kube;
using namespace std::chrono_literals;

namespace {

std::string env(const char* name) {
    const char* v = std::getenv(name);
    REQUIRE_MESSAGE(v != nullptr, name << " is not set: run this through test/kube/run_client_tests.sh");
    return v;
}
std::string dir() { return env("KUBE_FAKE_DIR"); }
std::string url() { return env("KUBE_FAKE_URL"); }

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}
std::string token() {
    std::string t = slurp(dir() + "/token");
    while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
    return t;
}

ClientConfig config() {
    ClientConfig c;
    c.server = url();
    c.ca_file = dir() + "/ca.crt";
    c.token_file = dir() + "/token";
    return c;
}

size_t collect(char* p, size_t s, size_t n, void* ud) {
    static_cast<std::string*>(ud)->append(p, s * n);
    return s * n;
}

// A control request to the fake server (plain libcurl, independent of the client under test).
rapidjson::Document ctl(const std::string& method, const std::string& path, const std::string& body = "") {
    CURL* c = curl_easy_init();
    std::string out;
    std::string u = url() + "/_control/" + path;
    curl_easy_setopt(c, CURLOPT_URL, u.c_str());
    curl_easy_setopt(c, CURLOPT_CAINFO, (dir() + "/ca.crt").c_str());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    if (!body.empty()) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    REQUIRE_MESSAGE(rc == CURLE_OK, "control " << method << " " << path << ": " << curl_easy_strerror(rc));
    REQUIRE_MESSAGE(code == 200, "control " << method << " " << path << ": HTTP " << code << " " << out);
    rapidjson::Document d;
    d.Parse(out.c_str());
    REQUIRE(!d.HasParseError());
    return d;
}

std::string pod_json(const std::string& ns, const std::string& name, const std::string& node,
                     const std::string& test_label, const std::string& extra_label = "") {
    return R"({"metadata":{"name":")" + name + R"(","namespace":")" + ns + R"(","labels":{"test":")" +
           test_label + R"(")" + (extra_label.empty() ? "" : R"(,"v":")" + extra_label + R"(")") +
           R"(}},"spec":{"nodeName":")" + node + R"(","containers":[{"name":"app","image":"busybox"}]}})";
}
std::string add_pod(const std::string& ns, const std::string& name, const std::string& node,
                    const std::string& t, const std::string& v = "") {
    auto d = ctl("POST", "pods", pod_json(ns, name, node, t, v));
    return d["items"][0]["metadata"]["resourceVersion"].GetString();
}
std::string current_rv() { return ctl("GET", "log?since=999999999")["resourceVersion"].GetString(); }

// One change as the server recorded it or as the client saw it: (type, key, rv). For a delete the
// rv is left out: the server bumps it on delete, the client only knows the last state it saw.
using Change = std::tuple<std::string, std::string, std::string>;

// The server's log of pod changes since `since` whose object has label test=<label>.
std::vector<Change> server_changes(const std::string& since, const std::string& label) {
    auto d = ctl("GET", "log?since=" + since);
    std::vector<Change> out;
    for (const auto& e : d["events"].GetArray()) {
        if (std::string(e["kind"].GetString()) != "Pod") continue;
        const auto& md = e["object"]["metadata"];
        if (!md.HasMember("labels") || !md["labels"].HasMember("test") ||
            std::string(md["labels"]["test"].GetString()) != label)
            continue;
        std::string type = e["type"].GetString();
        out.emplace_back(type, e["key"].GetString(),
                         type == "DELETED" ? "" : md["resourceVersion"].GetString());
    }
    return out;
}

template <class Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit = 10s) {
    auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
        if (pred()) return true;
        std::this_thread::sleep_for(20ms);
    }
    return pred();
}

// What an Informer<Pod> delivered, as Changes.
struct Recorder {
    std::mutex mu;
    std::vector<Change> changes;
    int synced = 0;
    std::vector<Status> errors;

    void on_change(const Pod* o, const Pod* n) {
        std::lock_guard l(mu);
        if (!o) {
            changes.emplace_back("ADDED", n->meta.namespace_ + "/" + n->meta.name, n->meta.resource_version);
        } else if (!n) {
            changes.emplace_back("DELETED", o->meta.namespace_ + "/" + o->meta.name, "");
        } else {
            CHECK(o->meta.resource_version != n->meta.resource_version);
            changes.emplace_back("MODIFIED", n->meta.namespace_ + "/" + n->meta.name,
                                 n->meta.resource_version);
        }
    }
    std::vector<Change> get() {
        std::lock_guard l(mu);
        return changes;
    }
    int synced_count() {
        std::lock_guard l(mu);
        return synced;
    }
    std::vector<Status> errs() {
        std::lock_guard l(mu);
        return errors;
    }
};

std::unique_ptr<Informer<Pod>> make_informer(Api& api, Recorder& rec, const std::string& label) {
    Informer<Pod>::Options opts;
    opts.list.label_selector = "test=" + label;
    opts.watch_timeout_seconds = 30;
    opts.backoff_initial = 50ms;
    opts.backoff_max = 400ms;
    return std::make_unique<Informer<Pod>>(
        api, opts, [&rec](const Pod* o, const Pod* n) { rec.on_change(o, n); },
        [&rec] {
            std::lock_guard l(rec.mu);
            ++rec.synced;
        },
        [&rec](const Status& s) {
            std::lock_guard l(rec.mu);
            rec.errors.push_back(s);
        });
}

}  // namespace

TEST_CASE("client GET pod and namespace from the fixtures") {
    auto api = make_client(config());
    auto pod = api->get_pod("demo", "httpbin-5c5c5c9d8b-x7k2p");
    REQUIRE_MESSAGE(pod.is_ok(), pod.status().to_string());
    CHECK(pod->node_name == "node-1");
    CHECK(pod->pod_ips == std::vector<std::string>{"10.244.0.17", "fd00:10:244::11"});
    auto ns = api->get_namespace("demo");
    REQUIRE_MESSAGE(ns.is_ok(), ns.status().to_string());
    CHECK(ns->meta.labels.at("istio.io/dataplane-mode") == "Kmesh");

    auto missing = api->get_pod("demo", "nope");
    CHECK(missing.status().code() == Errc::kNotFound);
    CHECK(missing.status().message().find("GET /api/v1/namespaces/demo/pods/nope") != std::string::npos);
    CHECK(missing.status().message().find("pods \"nope\" not found") != std::string::npos);
    CHECK(api->get_namespace("nope").status().code() == Errc::kNotFound);
}

TEST_CASE("client PATCH of annotations: merge patch applied by the server, null removes") {
    auto api = make_client(config());
    std::string rv0 = add_pod("patch", "p1", "node-1", "patch");
    REQUIRE(api->patch_pod_annotations("patch", "p1", {{"kmesh.net/redirection", "enabled"}, {"a", "b"}})
                .is_ok());
    auto state = ctl("GET", "state");
    const auto& ann = state["pods"]["patch/p1"]["metadata"]["annotations"];
    CHECK(std::string(ann["kmesh.net/redirection"].GetString()) == "enabled");
    CHECK(std::string(ann["a"].GetString()) == "b");
    REQUIRE(api->patch_pod_annotations("patch", "p1", {{"kmesh.net/redirection", std::nullopt}}).is_ok());
    state = ctl("GET", "state");
    CHECK_FALSE(state["pods"]["patch/p1"]["metadata"]["annotations"].HasMember("kmesh.net/redirection"));
    CHECK(state["pods"]["patch/p1"]["metadata"]["annotations"].HasMember("a"));
    auto log = server_changes(rv0, "patch");
    REQUIRE(log.size() == 2);
    CHECK(std::get<0>(log[0]) == "MODIFIED");
    CHECK(std::get<0>(log[1]) == "MODIFIED");
    auto pod = api->get_pod("patch", "p1");
    REQUIRE(pod.is_ok());
    CHECK(pod->meta.resource_version == std::get<2>(log[1]));
    CHECK(api->patch_pod_annotations("patch", "absent", {{"x", "y"}}).code() == Errc::kNotFound);
}

TEST_CASE("client LIST with fieldSelector spec.nodeName and labelSelector; pagination") {
    auto api = make_client(config());
    add_pod("list", "a", "node-a", "list");
    add_pod("list", "b", "node-b", "list");
    add_pod("list", "c", "node-a", "list", "x y");
    ListOptions o;
    o.field_selector = "spec.nodeName=node-a";
    o.label_selector = "test=list";
    auto l = api->list_pods(o);
    REQUIRE_MESSAGE(l.is_ok(), l.status().to_string());
    std::set<std::string> names;
    for (const auto& p : l->items) names.insert(p.meta.name);
    CHECK(names == std::set<std::string>{"a", "c"});
    CHECK(l->resource_version == current_rv());
    o.label_selector = "test=list,v=x y";  // URL-encoded by the client (space, comma, '=')
    l = api->list_pods(o);
    REQUIRE_MESSAGE(l.is_ok(), l.status().to_string());
    REQUIRE(l->items.size() == 1);
    CHECK(l->items[0].meta.name == "c");

    // 1203 pods: three pages of 500 from the server's continue tokens.
    std::string items = R"({"items":[)";
    for (int i = 0; i < 1203; ++i)
        items += (i ? "," : "") + pod_json("paging", "p" + std::to_string(i), "n", "paging");
    ctl("POST", "pods", items + "]}");
    ListOptions po;
    po.label_selector = "test=paging";
    auto before = ctl("GET", "stats");
    int lists_before = before.HasMember("LIST pods") ? before["LIST pods"].GetInt() : 0;
    auto pl = api->list_pods(po);
    REQUIRE_MESSAGE(pl.is_ok(), pl.status().to_string());
    CHECK(pl->items.size() == 1203);
    CHECK(ctl("GET", "stats")["LIST pods"].GetInt() - lists_before == 3);
    auto nl = api->list_namespaces({});
    REQUIRE(nl.is_ok());
    CHECK(std::any_of(nl->items.begin(), nl->items.end(),
                      [](const Namespace& n) { return n.meta.name == "demo"; }));

    o.field_selector = "spec.bogus=1";
    CHECK(api->list_pods(o).status().code() == Errc::kInvalidArgument);
}

TEST_CASE("client WATCH: events in the server's order, bookmarks, handler stop") {
    auto api = make_client(config());
    ctl("POST", "config", R"({"bookmark_interval": 0.2})");
    std::string rv0 = current_rv();
    std::vector<Change> seen;
    std::string last_bookmark;
    std::atomic<bool> stop{false};
    ListOptions o;
    o.label_selector = "test=watch";
    Status result;
    std::mutex mu;
    std::thread t([&] {
        result = api->watch_pods(
            o, rv0, 30,
            [&](const WatchEvent<Pod>& ev) {
                std::lock_guard l(mu);
                const auto& m = ev.object.meta;
                switch (ev.type) {
                    case EventType::kBookmark:
                        last_bookmark = m.resource_version;
                        return true;
                    case EventType::kAdded:
                        seen.emplace_back("ADDED", m.namespace_ + "/" + m.name, m.resource_version);
                        break;
                    case EventType::kModified:
                        seen.emplace_back("MODIFIED", m.namespace_ + "/" + m.name, m.resource_version);
                        break;
                    case EventType::kDeleted:
                        seen.emplace_back("DELETED", m.namespace_ + "/" + m.name, "");
                        break;
                }
                return seen.size() < 4;
            },
            stop);
    });
    add_pod("watch", "w1", "n", "watch");
    add_pod("watch", "w2", "n", "watch");
    add_pod("watch", "w1", "n", "watch", "changed");
    ctl("DELETE", "pods/watch/w2");
    t.join();
    CHECK_MESSAGE(result.is_ok(), result.to_string());
    CHECK(seen == server_changes(rv0, "watch"));

    // Bookmarks carry the server's current resourceVersion while nothing matches.
    add_pod("other", "o1", "n", "other");
    std::string top = current_rv();
    stop = false;
    std::atomic<bool> stop2{false};
    std::thread t2([&] {
        result = api->watch_pods(
            o, top, 30,
            [&](const WatchEvent<Pod>& ev) {
                std::lock_guard l(mu);
                if (ev.type == EventType::kBookmark) last_bookmark = ev.object.meta.resource_version;
                return true;
            },
            stop2);
    });
    CHECK(wait_until([&] {
        std::lock_guard l(mu);
        return last_bookmark == top;
    }));
    // `stop` ends a watch promptly although the server would keep it open for 30 s.
    auto t0 = std::chrono::steady_clock::now();
    stop2 = true;
    t2.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    CHECK(result.is_ok());
    ctl("POST", "config", R"({"bookmark_interval": 1.0})");
}

TEST_CASE("client WATCH: ends normally at timeoutSeconds") {
    auto api = make_client(config());
    std::atomic<bool> stop{false};
    auto t0 = std::chrono::steady_clock::now();
    Status s = api->watch_namespaces(
        {}, current_rv(), 1, [](const WatchEvent<Namespace>&) { return true; }, stop);
    CHECK_MESSAGE(s.is_ok(), s.to_string());
    CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

TEST_CASE("client WATCH: expired resourceVersion is kGone (ERROR event with a 410 Status)") {
    auto api = make_client(config());
    std::string old = current_rv();
    add_pod("gone", "g1", "n", "gone");
    ctl("POST", "compact");
    std::atomic<bool> stop{false};
    Status s = api->watch_pods(
        {}, old, 5, [](const WatchEvent<Pod>&) { return true; }, stop);
    CHECK(s.code() == Errc::kGone);
    CHECK(s.message().find("too old resource version") != std::string::npos);
    ctl("POST", "expire_watches", R"({"count": 1})");
    s = api->watch_pods(
        {}, current_rv(), 5, [](const WatchEvent<Pod>&) { return true; }, stop);
    CHECK(s.code() == Errc::kGone);
}

TEST_CASE("client WATCH: a connection cut mid-stream is kUnavailable, not a normal end") {
    auto api = make_client(config());
    std::atomic<bool> stop{false};
    std::atomic<int> events{0};
    Status s;
    std::string from = current_rv();  // taken before the thread: the pod below comes after it
    std::thread t([&] {
        s = api->watch_pods(
            {}, from, 30,
            [&](const WatchEvent<Pod>& ev) {
                if (ev.type != EventType::kBookmark) ++events;
                return true;
            },
            stop);
    });
    add_pod("drop", "d1", "n", "drop");
    CHECK(wait_until([&] { return events.load() == 1; }));
    if (events.load() != 1) stop = true;
    ctl("POST", "drop_watches");
    t.join();
    CHECK_MESSAGE(s.code() == Errc::kUnavailable, s.to_string());
}

TEST_CASE("client WATCH: a silent connection is given up (timeoutSeconds + 10 s without a byte)") {
    auto api = make_client(config());
    ctl("POST", "stall_watches", R"({"count": 1})");
    std::atomic<bool> stop{false};
    auto t0 = std::chrono::steady_clock::now();
    Status s = api->watch_pods(
        {}, current_rv(), 1, [](const WatchEvent<Pod>&) { return true; }, stop);
    auto took = std::chrono::steady_clock::now() - t0;
    CHECK_MESSAGE(s.code() == Errc::kUnavailable, s.to_string());
    CHECK(s.message().find("no data") != std::string::npos);
    CHECK(took >= 10s);
    CHECK(took < 14s);
    ctl("POST", "drop_watches");
}

TEST_CASE("client auth: wrong token => kUnauthenticated, token never in the message; rotation") {
    ClientConfig c = config();
    c.token_file.clear();
    c.token = "wrong-secret-token-Zq81";
    auto r = make_client(c)->get_namespace("demo");
    CHECK(r.status().code() == Errc::kUnauthenticated);
    CHECK(r.status().message().find("wrong-secret-token-Zq81") == std::string::npos);
    CHECK(r.status().message().find(token()) == std::string::npos);
    CHECK(r.status().message().find("Unauthorized") != std::string::npos);

    // The token file is read per request: a rotated file is used without a new client.
    std::string tf = dir() + "/token-copy";
    std::ofstream(tf) << "stale-token\n";
    ClientConfig fc = config();
    fc.token_file = tf;
    auto api = make_client(fc);
    auto st = api->get_namespace("demo").status();
    CHECK(st.code() == Errc::kUnauthenticated);
    CHECK(st.message().find("stale-token") == std::string::npos);
    std::ofstream(tf) << token() << "\n";
    CHECK(api->get_namespace("demo").is_ok());
    std::atomic<bool> stop{false};
    std::ofstream(tf) << "stale-token\n";
    Status ws = api->watch_pods(
        {}, "", 1, [](const WatchEvent<Pod>&) { return true; }, stop);
    CHECK(ws.code() == Errc::kUnauthenticated);
    CHECK(ws.message().find("stale-token") == std::string::npos);
}

TEST_CASE("client TLS: wrong CA or no CA is kUnavailable; client certificate authenticates") {
    ClientConfig c = config();
    // The category is what is tested, not the speed: loading the system CA store under ASan on a
    // loaded 2-core CI machine once took longer than the default 5 s (kTimeout instead).
    c.request_timeout = std::chrono::seconds(60);
    c.ca_file = dir() + "/other-ca.crt";
    auto r = make_client(c)->get_namespace("demo");
    CHECK(r.status().code() == Errc::kUnavailable);
    c.ca_file.clear();  // the system store does not know the test CA
    CHECK(make_client(c)->get_namespace("demo").status().code() == Errc::kUnavailable);
    c.ca_pem = slurp(dir() + "/ca.crt");  // CA as data
    CHECK(make_client(c)->get_namespace("demo").is_ok());

    ClientConfig cert = config();
    cert.token_file.clear();
    CHECK(make_client(cert)->get_namespace("demo").status().code() == Errc::kUnauthenticated);
    cert.client_cert_file = dir() + "/client.crt";
    cert.client_key_file = dir() + "/client.key";
    auto viafile = make_client(cert)->get_namespace("demo");
    CHECK_MESSAGE(viafile.is_ok(), viafile.status().to_string());
    cert.client_cert_file.clear();
    cert.client_key_file.clear();
    cert.client_cert_pem = slurp(dir() + "/client.crt");
    cert.client_key_pem = slurp(dir() + "/client.key");
    auto viablob = make_client(cert)->get_namespace("demo");
    CHECK_MESSAGE(viablob.is_ok(), viablob.status().to_string());

    ClientConfig unreachable = config();
    unreachable.server = "https://127.0.0.1:1";
    CHECK(make_client(unreachable)->get_namespace("demo").status().code() == Errc::kUnavailable);
}

TEST_CASE("client from the kubeconfig lib.sh writes (relative CA and tokenFile)") {
    auto c = load_kubeconfig(dir() + "/kubeconfig");
    REQUIRE_MESSAGE(c.is_ok(), c.status().to_string());
    auto ns = make_client(*c)->get_namespace("kube-system");
    CHECK_MESSAGE(ns.is_ok(), ns.status().to_string());
}

TEST_CASE("client HTTP errors map as api.hpp says") {
    auto api = make_client(config());
    struct Case {
        int http;
        Errc want;
    };
    for (Case k :
         {Case{403, Errc::kPermissionDenied}, Case{409, Errc::kConflict}, Case{410, Errc::kGone},
          Case{422, Errc::kInvalidArgument}, Case{500, Errc::kUnavailable}, Case{503, Errc::kUnavailable}}) {
        ctl("POST", "fail", R"({"status": )" + std::to_string(k.http) + R"(, "count": 1, "verb": "GET"})");
        auto r = api->get_namespace("demo");
        CHECK_MESSAGE(r.status().code() == k.want, k.http << ": " << r.status().to_string());
        CHECK(r.status().message().find("injected fault") != std::string::npos);
    }
    ClientConfig slow = config();
    slow.request_timeout = 300ms;
    ctl("POST", "fail", R"({"delay_ms": 1500, "count": 1, "verb": "GET"})");
    CHECK(make_client(slow)->get_namespace("demo").status().code() == Errc::kTimeout);
}

TEST_CASE("informer: list then watch; every change once and in the server's order") {
    auto api = make_client(config());
    std::string rv0 = current_rv();
    add_pod("inf", "i1", "n", "inf");
    add_pod("inf", "i2", "n", "inf");
    Recorder rec;
    auto inf = make_informer(*api, rec, "inf");
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    add_pod("inf", "i3", "n", "inf");
    add_pod("inf", "i1", "n", "inf", "2");
    ctl("DELETE", "pods/inf/i2");
    auto want = server_changes(rv0, "inf");
    REQUIRE(want.size() == 5);
    CHECK(wait_until([&] { return rec.get().size() >= want.size(); }));
    std::this_thread::sleep_for(200ms);  // nothing more may arrive
    CHECK(rec.get() == want);
    CHECK(rec.synced_count() == 1);
    auto snap = inf->snapshot();
    CHECK(snap.size() == 2);
    CHECK(snap.count("inf/i1") == 1);
    CHECK(snap.count("inf/i3") == 1);
    auto t0 = std::chrono::steady_clock::now();
    inf->stop();
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
}

TEST_CASE("informer: dropped connections resume from the last resourceVersion, no loss, no duplicates") {
    auto api = make_client(config());
    std::string rv0 = current_rv();
    Recorder rec;
    auto inf = make_informer(*api, rec, "drops");
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    for (int round = 0; round < 5; ++round) {
        for (int i = 0; i < 4; ++i)
            add_pod("drops", "d" + std::to_string(i), "n", "drops", std::to_string(round));
        if (round % 2) ctl("DELETE", "pods/drops/d" + std::to_string(round));
        ctl("POST", "drop_watches");
    }
    auto want = server_changes(rv0, "drops");
    CHECK(wait_until([&] { return rec.get().size() >= want.size(); }));
    std::this_thread::sleep_for(300ms);
    CHECK(rec.get() == want);
    CHECK(rec.synced_count() == 1);  // resumed, never relisted
    bool saw_unavailable = false;
    for (const auto& e : rec.errs()) saw_unavailable |= e.code() == Errc::kUnavailable;
    CHECK(saw_unavailable);
}

TEST_CASE("informer: events a server re-sends after a reconnect are not delivered twice") {
    auto api = make_client(config());
    std::string rv0 = current_rv();
    Recorder rec;
    auto inf = make_informer(*api, rec, "replay");
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    add_pod("replay", "r1", "n", "replay");
    add_pod("replay", "r2", "n", "replay");
    add_pod("replay", "r1", "n", "replay", "2");
    REQUIRE(wait_until([&] { return rec.get().size() == 3; }));
    // The next watch starts 3 changes early: ADDED r1, ADDED r2, MODIFIED r1 arrive again.
    ctl("POST", "rewind_watches", R"({"count": 1, "by": 3})");
    ctl("POST", "drop_watches");
    REQUIRE(wait_until([&] { return ctl("GET", "stats")["watches_active"].GetInt() == 1; }));
    add_pod("replay", "r3", "n", "replay");
    auto want = server_changes(rv0, "replay");
    REQUIRE(want.size() == 4);
    CHECK(wait_until([&] { return rec.get().size() >= 4; }));
    std::this_thread::sleep_for(300ms);
    CHECK(rec.get() == want);
}

TEST_CASE("informer: 410 relists and delivers exactly the difference") {
    auto api = make_client(config());
    add_pod("relist", "keep", "n", "relist");
    add_pod("relist", "mod", "n", "relist");
    add_pod("relist", "del", "n", "relist");
    Recorder rec;
    auto inf = make_informer(*api, rec, "relist");
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    REQUIRE(wait_until([&] { return rec.get().size() == 3; }));

    ctl("POST", "pause_watches");  // the informer cannot see what happens next
    std::string gap = current_rv();
    add_pod("relist", "new", "n", "relist");
    add_pod("relist", "mod", "n", "relist", "x");
    ctl("DELETE", "pods/relist/del");
    ctl("POST", "compact");
    ctl("POST", "resume_watches");
    auto want = server_changes(gap, "relist");
    REQUIRE(want.size() == 3);
    REQUIRE(wait_until([&] { return rec.synced_count() == 2; }));
    std::this_thread::sleep_for(300ms);
    auto got = rec.get();
    REQUIRE(got.size() == 6);
    std::vector<Change> after(got.begin() + 3, got.end());
    std::sort(after.begin(), after.end());
    std::sort(want.begin(), want.end());
    CHECK(after == want);
    bool saw_gone = false;
    for (const auto& e : rec.errs()) saw_gone |= e.code() == Errc::kGone;
    CHECK(saw_gone);
    // Changes after the relist flow through the new watch.
    std::string rv1 = current_rv();
    add_pod("relist", "late", "n", "relist");
    auto late = server_changes(rv1, "relist");
    CHECK(wait_until([&] { return rec.get().size() == 7; }));
    CHECK(rec.get().back() == late.at(0));
    auto snap = inf->snapshot();
    CHECK(snap.size() == 4);
    CHECK(snap.count("relist/del") == 0);
}

TEST_CASE("informer: bookmarks advance the resume point (no relist after a compaction)") {
    auto api = make_client(config());
    ctl("POST", "config", R"({"bookmark_interval": 0.1})");
    Recorder rec;
    auto inf = make_informer(*api, rec, "bm");
    add_pod("bm", "b1", "n", "bm");
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    // Changes the informer's selector does not match move the resourceVersion on.
    for (int i = 0; i < 3; ++i) add_pod("bm", "x" + std::to_string(i), "n", "not-bm");
    std::this_thread::sleep_for(500ms);  // several bookmarks
    ctl("POST", "compact");
    ctl("POST", "drop_watches");
    std::string rv1 = current_rv();
    add_pod("bm", "b2", "n", "bm");
    CHECK(wait_until([&] { return rec.get().size() == 2; }));
    CHECK(rec.get().back() == server_changes(rv1, "bm").at(0));
    CHECK(rec.synced_count() == 1);
    for (const auto& e : rec.errs()) CHECK_MESSAGE(e.code() != Errc::kGone, e.to_string());
    ctl("POST", "config", R"({"bookmark_interval": 1.0})");
}

TEST_CASE("informer: failing LISTs back off and recover") {
    auto api = make_client(config());
    ctl("POST", "fail", R"({"status": 503, "count": 3, "verb": "GET", "path_prefix": "/api/v1/pods"})");
    add_pod("boff", "b", "n", "boff");
    Recorder rec;
    auto inf = make_informer(*api, rec, "boff");
    auto t0 = std::chrono::steady_clock::now();
    inf->start();
    REQUIRE(wait_until([&] { return inf->synced(); }));
    auto took = std::chrono::steady_clock::now() - t0;
    CHECK(rec.errs().size() == 3);
    for (const auto& e : rec.errs()) CHECK(e.code() == Errc::kUnavailable);
    CHECK(took >= 50ms + 100ms + 200ms);  // 50, 100, 200 ms back-off
    CHECK(rec.get().size() == 1);
}
