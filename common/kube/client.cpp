// The real Api: libcurl (TLS by OpenSSL, verified against the config's CA) and RapidJSON.
// GET/PATCH/LIST use the easy interface with a whole-request timeout; a WATCH runs on a multi
// handle polled every 100 ms so that `stop` ends it promptly and a silent connection is noticed.
// Easy handles are pooled so consecutive requests (the plugin's GET pod, GET namespace, PATCH)
// reuse one TLS connection.
#include <curl/curl.h>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <mutex>
#include <sstream>
#include <vector>

#include "common/kube/api.hpp"
#include "common/kube/json_util.hpp"

namespace kmesh::kube {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kMaxBody = 64u << 20;  // a LIST of many pods is large, but not this large
constexpr size_t kMaxLine = 16u << 20;  // one watch event
constexpr size_t kMaxErrorBody = 64u << 10;
constexpr long kListPageSize = 500;

void global_init() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// Percent-encoding of a query value or path segment (RFC 3986 unreserved kept).
std::string url_encode(std::string_view s) {
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out += fmt::format("%{:02X}", c);
        }
    }
    return out;
}

std::string trim(std::string s) {
    auto ws = [](unsigned char c) { return std::isspace(c) != 0; };
    while (!s.empty() && ws(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && ws(static_cast<unsigned char>(s[i]))) ++i;
    return s.substr(i);
}

// The server's Status message when the body is one, else a bounded piece of the body.
std::string server_message(std::string_view body) {
    detail::ApiStatus st = detail::decode_status_body(body);
    if (!st.message.empty()) return st.message;
    std::string b(body.substr(0, 200));
    std::replace(b.begin(), b.end(), '\n', ' ');
    return b.empty() ? "(empty body)" : b;
}

Status curl_status(CURLcode rc, const char* errbuf, std::string_view request) {
    Errc code = rc == CURLE_OPERATION_TIMEDOUT ? Errc::kTimeout : Errc::kUnavailable;
    return {code, fmt::format("{}: {}", request, errbuf && *errbuf ? errbuf : curl_easy_strerror(rc))};
}

size_t append_body(char* p, size_t size, size_t n, void* ud) {
    auto* body = static_cast<std::string*>(ud);
    size_t len = size * n;
    if (body->size() + len > kMaxBody) return 0;  // aborts with CURLE_WRITE_ERROR
    body->append(p, len);
    return len;
}

struct Response {
    long code = 0;
    std::string body;
};

class Client final : public Api {
  public:
    explicit Client(ClientConfig config) : cfg_(std::move(config)) { global_init(); }
    ~Client() override {
        for (CURL* h : pool_) curl_easy_cleanup(h);
    }

    Result<Pod> get_pod(const std::string& ns, const std::string& name) override {
        if (ns.empty() || name.empty())
            return Status(Errc::kInvalidArgument, "GET pod: empty namespace or name");
        return get_object<Pod>(
            fmt::format("/api/v1/namespaces/{}/pods/{}", url_encode(ns), url_encode(name)));
    }

    Result<Namespace> get_namespace(const std::string& name) override {
        if (name.empty()) return Status(Errc::kInvalidArgument, "GET namespace: empty name");
        return get_object<Namespace>(fmt::format("/api/v1/namespaces/{}", url_encode(name)));
    }

    Status patch_pod_annotations(const std::string& ns, const std::string& name,
                                 const AnnotationPatch& patch) override {
        if (ns.empty() || name.empty()) return {Errc::kInvalidArgument, "PATCH pod: empty namespace or name"};
        rapidjson::StringBuffer buf;
        rapidjson::Writer<rapidjson::StringBuffer> w(buf);
        w.StartObject();
        w.Key("metadata");
        w.StartObject();
        w.Key("annotations");
        w.StartObject();
        for (const auto& [k, v] : patch) {
            w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size()));
            if (v) {
                w.String(v->data(), static_cast<rapidjson::SizeType>(v->size()));
            } else {
                w.Null();  // merge patch: null removes the key
            }
        }
        w.EndObject();
        w.EndObject();
        w.EndObject();
        std::string path = fmt::format("/api/v1/namespaces/{}/pods/{}", url_encode(ns), url_encode(name));
        auto r = request("PATCH", path, std::string(buf.GetString(), buf.GetSize()),
                         "application/merge-patch+json");
        return r.status();
    }

    Result<List<Pod>> list_pods(const ListOptions& opts) override { return list<Pod>("/api/v1/pods", opts); }
    Result<List<Namespace>> list_namespaces(const ListOptions& opts) override {
        return list<Namespace>("/api/v1/namespaces", opts);
    }

    Status watch_pods(const ListOptions& opts, const std::string& rv, int timeout_seconds,
                      const WatchHandler<Pod>& handler, const std::atomic<bool>& stop) override {
        return watch<Pod>("/api/v1/pods", opts, rv, timeout_seconds, handler, stop);
    }
    Status watch_namespaces(const ListOptions& opts, const std::string& rv, int timeout_seconds,
                            const WatchHandler<Namespace>& handler, const std::atomic<bool>& stop) override {
        return watch<Namespace>("/api/v1/namespaces", opts, rv, timeout_seconds, handler, stop);
    }

  private:
    // One pooled easy handle, returned (reset, connection kept) on destruction.
    class Handle {
      public:
        explicit Handle(Client& c) : c_(c) {
            std::lock_guard lock(c_.mu_);
            if (!c_.pool_.empty()) {
                h_ = c_.pool_.back();
                c_.pool_.pop_back();
            }
            if (!h_) h_ = curl_easy_init();
        }
        ~Handle() {
            if (headers_) curl_slist_free_all(headers_);
            if (!h_) return;
            curl_easy_reset(h_);
            std::lock_guard lock(c_.mu_);
            c_.pool_.push_back(h_);
        }
        Handle(const Handle&) = delete;
        Handle& operator=(const Handle&) = delete;
        CURL* get() const { return h_; }
        curl_slist*& headers() { return headers_; }

      private:
        Client& c_;
        CURL* h_ = nullptr;
        curl_slist* headers_ = nullptr;
    };

    // Common options: TLS, credentials, timeouts. `request` names the call in error messages.
    Status setup(Handle& h, const std::string& path_query, const std::string& request, bool whole_timeout,
                 char* errbuf) {
        CURL* c = h.get();
        if (!c) return {Errc::kInternal, fmt::format("{}: curl_easy_init failed", request)};
        std::string url = cfg_.server + path_query;
        curl_easy_setopt(c, CURLOPT_URL, url.c_str());
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(c, CURLOPT_USERAGENT, "kmesh-cpp");
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(cfg_.connect_timeout.count()));
        if (whole_timeout)
            curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(cfg_.request_timeout.count()));
        curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 30L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 10L);

        // Only the configured CA is trusted (no system store on top of it).
        if (cfg_.insecure_skip_tls_verify) {
            curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
            curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
        } else if (!cfg_.ca_pem.empty()) {
            curl_blob blob{const_cast<char*>(cfg_.ca_pem.data()), cfg_.ca_pem.size(), CURL_BLOB_COPY};
            curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &blob);
            curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
        } else if (!cfg_.ca_file.empty()) {
            curl_easy_setopt(c, CURLOPT_CAINFO, cfg_.ca_file.c_str());
            curl_easy_setopt(c, CURLOPT_CAPATH, nullptr);
        }
        if (!cfg_.client_cert_pem.empty()) {
            curl_blob blob{const_cast<char*>(cfg_.client_cert_pem.data()), cfg_.client_cert_pem.size(),
                           CURL_BLOB_COPY};
            curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &blob);
            curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
        } else if (!cfg_.client_cert_file.empty()) {
            curl_easy_setopt(c, CURLOPT_SSLCERT, cfg_.client_cert_file.c_str());
        }
        if (!cfg_.client_key_pem.empty()) {
            curl_blob blob{const_cast<char*>(cfg_.client_key_pem.data()), cfg_.client_key_pem.size(),
                           CURL_BLOB_COPY};
            curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &blob);
            curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
        } else if (!cfg_.client_key_file.empty()) {
            curl_easy_setopt(c, CURLOPT_SSLKEY, cfg_.client_key_file.c_str());
        }

        // The token file is read on every request: a rotated projected token is used at once.
        std::string token = cfg_.token;
        if (token.empty() && !cfg_.token_file.empty()) {
            std::ifstream in(cfg_.token_file, std::ios::binary);
            std::ostringstream ss;
            if (in) ss << in.rdbuf();
            if (!in)
                return {Errc::kUnauthenticated,
                        fmt::format("{}: cannot read token file {}", request, cfg_.token_file)};
            token = trim(ss.str());
        }
        curl_slist*& hdrs = h.headers();
        hdrs = curl_slist_append(hdrs, "Accept: application/json");
        if (!token.empty()) hdrs = curl_slist_append(hdrs, ("Authorization: Bearer " + token).c_str());
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        return {};
    }

    Result<Response> request(const char* verb, const std::string& path_query, const std::string& body = {},
                             const char* content_type = nullptr) {
        std::string name = fmt::format("{} {}", verb, path_query);
        Handle h(*this);
        char errbuf[CURL_ERROR_SIZE] = {};
        if (auto s = setup(h, path_query, name, true, errbuf); !s) return s;
        CURL* c = h.get();
        if (content_type)
            h.headers() =
                curl_slist_append(h.headers(), fmt::format("Content-Type: {}", content_type).c_str());
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h.headers());
        if (std::string_view(verb) != "GET") {
            curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, verb);
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.c_str());
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
        }
        Response resp;
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, append_body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp.body);
        CURLcode rc = curl_easy_perform(c);
        if (rc != CURLE_OK) return curl_status(rc, errbuf, name);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.code);
        if (resp.code < 200 || resp.code >= 300)
            return Status(detail::errc_for_http(resp.code),
                          fmt::format("{}: HTTP {}: {}", name, resp.code, server_message(resp.body)));
        return resp;
    }

    template <class T>
    Result<T> get_object(const std::string& path) {
        auto r = request("GET", path);
        if (!r) return r.status();
        rapidjson::Document doc;
        doc.Parse(r->body.data(), r->body.size());
        if (doc.HasParseError())
            return Status(Errc::kDataLoss, fmt::format("GET {}: response is not JSON", path));
        T out;
        if (auto s = detail::decode(doc, &out); !s)
            return Status(Errc::kDataLoss, fmt::format("GET {}: {}", path, s.message()));
        return out;
    }

    static std::string query(const ListOptions& opts) {
        std::string q;
        if (!opts.field_selector.empty()) q += "&fieldSelector=" + url_encode(opts.field_selector);
        if (!opts.label_selector.empty()) q += "&labelSelector=" + url_encode(opts.label_selector);
        return q;
    }

    template <class T>
    Result<List<T>> list(const std::string& path, const ListOptions& opts) {
        List<T> out;
        std::string cont;
        // Pages of one consistent snapshot (the server's continue token); a token that expired
        // comes back as 410, which the informer answers with a fresh LIST.
        for (int page = 0;; ++page) {
            std::string pq = fmt::format("{}?limit={}{}", path, kListPageSize, query(opts));
            if (!cont.empty()) pq += "&continue=" + url_encode(cont);
            auto r = request("GET", pq);
            if (!r) return r.status();
            rapidjson::Document doc;
            doc.Parse(r->body.data(), r->body.size());
            if (doc.HasParseError() || !doc.IsObject())
                return Status(Errc::kDataLoss, fmt::format("LIST {}: response is not a JSON object", path));
            auto md = doc.FindMember("metadata");
            cont.clear();
            if (md != doc.MemberEnd() && md->value.IsObject()) {
                if (auto rv = md->value.FindMember("resourceVersion");
                    rv != md->value.MemberEnd() && rv->value.IsString())
                    out.resource_version = rv->value.GetString();
                if (auto c = md->value.FindMember("continue");
                    c != md->value.MemberEnd() && c->value.IsString())
                    cont = c->value.GetString();
            }
            auto items = doc.FindMember("items");
            if (items != doc.MemberEnd() && !items->value.IsNull()) {
                if (!items->value.IsArray())
                    return Status(Errc::kDataLoss, fmt::format("LIST {}: items is not an array", path));
                for (const auto& item : items->value.GetArray()) {
                    T obj;
                    if (auto s = detail::decode(item, &obj); !s)
                        return Status(Errc::kDataLoss, fmt::format("LIST {}: {}", path, s.message()));
                    out.items.push_back(std::move(obj));
                }
            }
            if (cont.empty()) break;
            if (page > 100000)
                return Status(Errc::kDataLoss, fmt::format("LIST {}: endless pagination", path));
        }
        if (out.resource_version.empty())
            return Status(Errc::kDataLoss, fmt::format("LIST {}: no metadata.resourceVersion", path));
        return out;
    }

    template <class T>
    struct WatchState {
        CURL* curl = nullptr;
        const WatchHandler<T>* handler = nullptr;
        std::string name;
        long http_code = 0;
        std::string buf;         // undecoded bytes of the current line
        std::string error_body;  // body of a non-200 answer
        Status result;           // an ERROR event or an undecodable line
        bool handler_stopped = false;
        Clock::time_point last_data = Clock::now();

        // false: abort the transfer
        bool line(std::string_view text) {
            if (text.empty() || text == "\r") return true;
            rapidjson::Document doc;
            doc.Parse(text.data(), text.size());
            if (doc.HasParseError() || !doc.IsObject()) {
                result = {Errc::kDataLoss, fmt::format("{}: watch event is not a JSON object", name)};
                return false;
            }
            auto type = doc.FindMember("type");
            auto obj = doc.FindMember("object");
            if (type == doc.MemberEnd() || !type->value.IsString() || obj == doc.MemberEnd()) {
                result = {Errc::kDataLoss, fmt::format("{}: watch event without type or object", name)};
                return false;
            }
            std::string_view t = type->value.GetString();
            WatchEvent<T> ev;
            if (t == "ERROR") {
                detail::ApiStatus st = detail::decode_status(obj->value);
                Errc code = st.code == 0 ? Errc::kUnavailable : detail::errc_for_http(st.code);
                result = {code, fmt::format("{}: watch ERROR {}: {}", name, st.code,
                                            st.message.empty() ? st.reason : st.message)};
                return false;
            }
            if (t == "ADDED") {
                ev.type = EventType::kAdded;
            } else if (t == "MODIFIED") {
                ev.type = EventType::kModified;
            } else if (t == "DELETED") {
                ev.type = EventType::kDeleted;
            } else if (t == "BOOKMARK") {
                ev.type = EventType::kBookmark;
            } else {
                result = {Errc::kDataLoss, fmt::format("{}: unknown watch event type \"{}\"", name, t)};
                return false;
            }
            if (auto s = detail::decode(obj->value, &ev.object); !s) {
                result = {Errc::kDataLoss, fmt::format("{}: {} event: {}", name, t, s.message())};
                return false;
            }
            if (!(*handler)(ev)) {
                handler_stopped = true;
                return false;
            }
            return true;
        }

        static size_t write(char* p, size_t size, size_t n, void* ud) {
            auto* ws = static_cast<WatchState*>(ud);
            size_t len = size * n;
            ws->last_data = Clock::now();
            if (ws->http_code == 0) curl_easy_getinfo(ws->curl, CURLINFO_RESPONSE_CODE, &ws->http_code);
            if (ws->http_code != 200) {
                if (ws->error_body.size() < kMaxErrorBody)
                    ws->error_body.append(p, std::min(len, kMaxErrorBody));
                return len;
            }
            ws->buf.append(p, len);
            size_t start = 0;
            for (;;) {
                size_t nl = ws->buf.find('\n', start);
                if (nl == std::string::npos) break;
                if (!ws->line(std::string_view(ws->buf).substr(start, nl - start))) return 0;
                start = nl + 1;
            }
            ws->buf.erase(0, start);
            if (ws->buf.size() > kMaxLine) {
                ws->result = {Errc::kDataLoss,
                              fmt::format("{}: watch event longer than {} bytes", ws->name, kMaxLine)};
                return 0;
            }
            return len;
        }
    };

    template <class T>
    Status watch(const std::string& path, const ListOptions& opts, const std::string& rv, int timeout_seconds,
                 const WatchHandler<T>& handler, const std::atomic<bool>& stop) {
        std::string pq = fmt::format("{}?watch=true&allowWatchBookmarks=true&timeoutSeconds={}{}", path,
                                     timeout_seconds, query(opts));
        if (!rv.empty()) pq += "&resourceVersion=" + url_encode(rv);
        std::string name = fmt::format("WATCH {}", pq);
        Handle h(*this);
        char errbuf[CURL_ERROR_SIZE] = {};
        if (auto s = setup(h, pq, name, false, errbuf); !s) return s;
        WatchState<T> ws;
        ws.curl = h.get();
        ws.handler = &handler;
        ws.name = name;
        curl_easy_setopt(h.get(), CURLOPT_WRITEFUNCTION, &WatchState<T>::write);
        curl_easy_setopt(h.get(), CURLOPT_WRITEDATA, &ws);

        // The server ends the stream after timeoutSeconds; a connection silent for longer than
        // that (plus slack) is dead even when TCP has not noticed.
        auto idle_limit = std::chrono::seconds(std::max(timeout_seconds, 1) + 10);
        CURLM* m = curl_multi_init();
        curl_multi_add_handle(m, h.get());
        Status idle;
        CURLcode rc = CURLE_OK;
        bool done = false;
        for (;;) {
            int running = 0;
            curl_multi_perform(m, &running);
            int left = 0;
            while (CURLMsg* msg = curl_multi_info_read(m, &left)) {
                if (msg->msg == CURLMSG_DONE) {
                    rc = msg->data.result;
                    done = true;
                }
            }
            if (done || running == 0) break;
            if (stop.load()) break;
            if (Clock::now() - ws.last_data > idle_limit) {
                idle = {Errc::kUnavailable,
                        fmt::format("{}: no data for {} s", name,
                                    std::chrono::duration_cast<std::chrono::seconds>(idle_limit).count())};
                break;
            }
            curl_multi_poll(m, nullptr, 0, 100, nullptr);
        }
        curl_multi_remove_handle(m, h.get());
        curl_multi_cleanup(m);

        if (!ws.result.is_ok()) return ws.result;
        if (ws.handler_stopped || stop.load()) return {};
        if (!idle.is_ok()) return idle;
        if (!done) return {};
        if (rc != CURLE_OK) return curl_status(rc, errbuf, name);
        if (ws.http_code == 0) curl_easy_getinfo(h.get(), CURLINFO_RESPONSE_CODE, &ws.http_code);
        if (ws.http_code != 200)
            return {detail::errc_for_http(ws.http_code),
                    fmt::format("{}: HTTP {}: {}", name, ws.http_code, server_message(ws.error_body))};
        if (!trim(ws.buf).empty())
            return {Errc::kUnavailable, fmt::format("{}: stream ended inside an event", name)};
        return {};
    }

    ClientConfig cfg_;
    std::mutex mu_;
    std::vector<CURL*> pool_;
};

}  // namespace

std::unique_ptr<Api> make_client(const ClientConfig& config) { return std::make_unique<Client>(config); }

}  // namespace kmesh::kube
