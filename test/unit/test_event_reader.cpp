// The kernel event reader (agent/src/telemetry/event_reader): decoding of ring buffer records and
// the flush order, on hand-built records. The records are written byte by byte at the offsets the
// ABI documents (bpf/kmesh_abi.h, checked by common/abi.hpp), little-endian as the BPF programs
// store them on this machine, not through the struct the decoder reads.
#include <doctest/doctest.h>
#include <rapidjson/document.h>

#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/src/telemetry/event_reader.hpp"

using namespace kmesh;
using namespace kmesh::telemetry;

namespace {

struct RawRecord {
    std::vector<uint8_t> b = std::vector<uint8_t>(104, 0);
    void put(size_t off, uint64_t v, size_t n) {
        for (size_t i = 0; i < n; i++) b[off + i] = static_cast<uint8_t>(v >> (8 * i));
    }
    void v4(size_t off, uint8_t a, uint8_t bb, uint8_t c, uint8_t d) {
        b[off + 10] = 0xff;
        b[off + 11] = 0xff;
        b[off + 12] = a;
        b[off + 13] = bb;
        b[off + 14] = c;
        b[off + 15] = d;
    }
    void v6(size_t off, std::initializer_list<uint8_t> bytes) {
        size_t i = 0;
        for (uint8_t x : bytes) b[off + i++] = x;
    }
    // Offsets: cookie 0, ts 8, duration 16, sent 24, recv 32, local 40, remote 56, orig 72,
    // local_port 88, remote_port 90, orig_port 92, type 94, role 95, flags 96, reason 100.
    RawRecord& cookie(uint64_t v) { return put(0, v, 8), *this; }
    RawRecord& ts(uint64_t v) { return put(8, v, 8), *this; }
    RawRecord& duration(uint64_t v) { return put(16, v, 8), *this; }
    RawRecord& sent(uint64_t v) { return put(24, v, 8), *this; }
    RawRecord& recv(uint64_t v) { return put(32, v, 8), *this; }
    RawRecord& ports(uint16_t local, uint16_t remote, uint16_t orig) {
        put(88, local, 2);
        put(90, remote, 2);
        put(92, orig, 2);
        return *this;
    }
    RawRecord& type(uint8_t t) { return put(94, t, 1), *this; }
    RawRecord& role(uint8_t r) { return put(95, r, 1), *this; }
    RawRecord& flags(uint32_t f) { return put(96, f, 4), *this; }
    RawRecord& reason(uint32_t r) { return put(100, r, 4), *this; }
};

// A v4 client socket connected through a VIP: 10.0.0.5:40000 -> 10.0.1.7:8080, VIP 10.96.0.10:80.
RawRecord v4_open() {
    RawRecord r;
    r.cookie(0x1122334455667788ull).ts(1000).ports(40000, 8080, 80).type(1).role(1).flags(1u | 4u);
    r.v4(40, 10, 0, 0, 5);
    r.v4(56, 10, 0, 1, 7);
    r.v4(72, 10, 96, 0, 10);
    return r;
}

class FakeKernel : public TelemetryKernel {
  public:
    std::deque<std::vector<uint8_t>> queue;
    std::vector<std::string> calls;
    std::vector<std::vector<uint8_t>> on_iterator;  // records the "iterator" adds when run
    bool has_iterator = true;
    kmesh_tel_config config{};
    KernelTelStats stats{};

    bool wait(std::chrono::milliseconds timeout) override {
        if (!queue.empty()) return true;
        std::this_thread::sleep_for(std::min(timeout, std::chrono::milliseconds(5)));
        return false;
    }
    Result<int> consume(const RecordFn& fn) override {
        calls.push_back("consume");
        int n = 0;
        while (!queue.empty()) {
            auto rec = std::move(queue.front());
            queue.pop_front();
            fn(rec.data(), rec.size());
            n++;
        }
        return n;
    }
    Status run_iterator() override {
        calls.push_back("iterator");
        if (!has_iterator) return {Errc::kUnavailable, "no iterator"};
        for (auto& r : on_iterator) queue.push_back(r);
        on_iterator.clear();
        return {};
    }
    Status write_config(const kmesh_tel_config& c) override {
        calls.push_back("config");
        config = c;
        return {};
    }
    Result<KernelTelStats> read_stats() override { return stats; }
};

}  // namespace

TEST_CASE("decode_conn_event: an IPv4 source record through a VIP") {
    RawRecord r = v4_open();
    auto ev = decode_conn_event(r.b.data(), r.b.size());
    REQUIRE(ev);
    CHECK(ev->type == ConnEventType::kOpen);
    CHECK(ev->role == ConnRole::kSource);
    CHECK(ev->cookie == 0x1122334455667788ull);
    CHECK(ev->ts_ns == 1000);
    CHECK(ev->local.str() == "10.0.0.5");
    CHECK(ev->local.is_v4());
    CHECK(ev->local_port == 40000);
    CHECK(ev->remote.str() == "10.0.1.7");
    CHECK(ev->remote_port == 8080);
    CHECK(ev->translated);
    CHECK(ev->orig.str() == "10.96.0.10");
    CHECK(ev->orig_port == 80);
    CHECK_FALSE(ev->waypoint);
    CHECK_FALSE(ev->accelerated);
    CHECK(ev->client_addr().str() == "10.0.0.5");
    CHECK(ev->server_addr().str() == "10.0.1.7");
}

TEST_CASE("decode_conn_event: an IPv6 destination close with bytes, duration and flags") {
    RawRecord r;
    r.cookie(7).ts(5'000'000'000ull).duration(1'500'000'000ull).sent(123456789012ull).recv(65537);
    r.ports(8080, 51234, 0).type(3).role(2).flags(2u | 8u);
    r.v6(40, {0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x07});  // fd00::107
    r.v6(56, {0xfd, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x05});  // fd00::5
    // Bytes in orig without TRANSLATED are ignored (a destination never has an orig).
    r.v4(72, 1, 2, 3, 4);
    auto ev = decode_conn_event(r.b.data(), r.b.size());
    REQUIRE(ev);
    CHECK(ev->type == ConnEventType::kClose);
    CHECK(ev->role == ConnRole::kDestination);
    CHECK(ev->duration_ns == 1'500'000'000ull);
    CHECK(ev->sent_bytes == 123456789012ull);
    CHECK(ev->recv_bytes == 65537);
    CHECK(ev->local.str() == "fd00::107");
    CHECK_FALSE(ev->local.is_v4());
    CHECK(ev->local_port == 8080);
    CHECK(ev->remote.str() == "fd00::5");
    CHECK(ev->remote_port == 51234);
    CHECK_FALSE(ev->translated);
    CHECK(ev->orig.is_unspecified());
    CHECK(ev->waypoint);
    CHECK(ev->accelerated);
    CHECK(ev->client_addr().str() == "fd00::5");
}

TEST_CASE("decode_conn_event: a denied record carries its reason; bad records are refused") {
    RawRecord d;
    d.ports(8080, 33000, 0).type(4).role(2).flags(4).reason(3);
    d.v4(40, 10, 0, 1, 7);
    d.v4(56, 10, 0, 0, 5);
    auto ev = decode_conn_event(d.b.data(), d.b.size());
    REQUIRE(ev);
    CHECK(ev->type == ConnEventType::kDenied);
    CHECK(ev->reason == 3);
    CHECK(ev->cookie == 0);

    RawRecord r = v4_open();
    auto short_rec = decode_conn_event(r.b.data(), 103);
    CHECK_FALSE(short_rec);
    CHECK(short_rec.status().code() == Errc::kDataLoss);
    RawRecord bad_type = v4_open();
    bad_type.type(9);
    CHECK_FALSE(decode_conn_event(bad_type.b.data(), 104));
    bad_type.type(0);
    CHECK_FALSE(decode_conn_event(bad_type.b.data(), 104));
    RawRecord bad_role = v4_open();
    bad_role.role(3);
    CHECK_FALSE(decode_conn_event(bad_role.b.data(), 104));
}

TEST_CASE("EventReader: flush reads the buffer, runs the iterator, then hands its updates over") {
    auto kernel = std::make_unique<FakeKernel>();
    FakeKernel* k = kernel.get();
    std::vector<ConnEvent> got;
    EventReader reader(
        std::move(kernel), [&](const ConnEvent& e) { got.push_back(e); }, std::chrono::seconds(5));
    k->queue.push_back(v4_open().b);
    RawRecord upd = v4_open();
    upd.type(2).sent(100).recv(2000);
    k->on_iterator.push_back(upd.b);
    RawRecord junk = v4_open();
    junk.role(0);
    k->queue.push_back(junk.b);

    REQUIRE(reader.flush());
    CHECK(k->calls == std::vector<std::string>{"consume", "iterator", "consume"});
    REQUIRE(got.size() == 2);
    CHECK(got[0].type == ConnEventType::kOpen);
    CHECK(got[1].type == ConnEventType::kUpdate);
    CHECK(got[1].sent_bytes == 100);
    CHECK(got[1].recv_bytes == 2000);
    auto st = reader.stats();
    CHECK(st.decoded == 2);
    CHECK(st.malformed == 1);
    CHECK(st.flushes == 1);

    // Without an iterator the flush still reads the buffer and says why there were no updates.
    k->has_iterator = false;
    k->queue.push_back(v4_open().b);
    Status s = reader.flush();
    CHECK(s.code() == Errc::kUnavailable);
    CHECK(got.size() == 3);
    CHECK(reader.stats().flushes == 1);

    REQUIRE(reader.set_enabled(true));
    CHECK(k->config.enabled == 1);
    CHECK(reader.enabled());
    REQUIRE(reader.set_enabled(false));
    CHECK(k->config.enabled == 0);
}

TEST_CASE("EventReader: the poll thread delivers events and stops") {
    auto kernel = std::make_unique<FakeKernel>();
    FakeKernel* k = kernel.get();
    std::mutex mu;
    std::vector<ConnEvent> got;
    k->queue.push_back(v4_open().b);  // there before the thread starts: no race on the fake
    EventReader reader(
        std::move(kernel),
        [&](const ConnEvent& e) {
            std::lock_guard lock(mu);
            got.push_back(e);
        },
        std::chrono::seconds(60));
    reader.start();
    for (int i = 0; i < 200; i++) {
        {
            std::lock_guard lock(mu);
            if (!got.empty()) break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    reader.stop();
    std::lock_guard lock(mu);
    REQUIRE(got.size() == 1);
    CHECK(got[0].remote.str() == "10.0.1.7");
}

TEST_CASE("ConnEventLog keeps the last events and serves them as JSON") {
    ConnEventLog log(4);
    RawRecord r = v4_open();
    auto ev = decode_conn_event(r.b.data(), r.b.size());
    REQUIRE(ev);
    for (int i = 0; i < 6; i++) {
        ConnEvent e = *ev;
        e.local_port = static_cast<uint16_t>(40000 + i);
        log.record(e);
    }
    rapidjson::Document d;
    d.Parse(log.json().c_str());
    REQUIRE_FALSE(d.HasParseError());
    CHECK(d["recorded"].GetUint64() == 6);
    const auto& events = d["events"];
    REQUIRE(events.Size() == 4);
    CHECK(events[0]["seq"].GetUint64() == 3);
    CHECK(events[0]["local_port"].GetUint() == 40002);
    CHECK(std::string(events[3]["type"].GetString()) == "open");
    CHECK(std::string(events[3]["role"].GetString()) == "source");
    CHECK(std::string(events[3]["remote"].GetString()) == "10.0.1.7");
    CHECK(std::string(events[3]["orig"].GetString()) == "10.96.0.10");
    CHECK(events[3]["orig_port"].GetUint() == 80);
    CHECK(events[3]["translated"].GetBool());
    CHECK(events[3]["v4"].GetBool());
}
