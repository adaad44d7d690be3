#include "agent/src/sources/xds/wire.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <optional>

namespace kmesh::xds {

using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::Resource;
using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

namespace {

// DeltaDiscoveryResponse's field numbers (envoy/service/discovery/v3/discovery.proto).
constexpr int kSystemVersionInfo = 1, kResources = 2, kTypeUrl = 4, kNonce = 5, kRemovedResources = 6;

// The chunks as one stream. With `release`, a chunk is dropped once the stream has moved past
// it: CodedInputStream only asks for the next buffer when it is done with the current one (it
// copies what straddles a boundary), so nothing points into a chunk that Next() has left.
class ChunkStream : public google::protobuf::io::ZeroCopyInputStream {
  public:
    ChunkStream(std::vector<grpc::Slice>& chunks, bool release) : chunks_(chunks), release_(release) {}

    bool Next(const void** data, int* size) override {
        if (backed_up_ > 0) {
            const grpc::Slice& c = chunks_[cur_];
            *data = c.begin() + (c.size() - backed_up_);
            *size = backed_up_;
            count_ += backed_up_;
            backed_up_ = 0;
            return true;
        }
        for (;;) {
            if (started_ && release_ && cur_ < chunks_.size()) chunks_[cur_] = grpc::Slice();
            if (started_) cur_++;
            started_ = true;
            if (cur_ >= chunks_.size()) {
                cur_ = chunks_.size();
                return false;
            }
            if (chunks_[cur_].size() == 0) continue;
            *data = chunks_[cur_].begin();
            *size = static_cast<int>(chunks_[cur_].size());
            count_ += *size;
            return true;
        }
    }
    void BackUp(int count) override {
        backed_up_ = count;
        count_ -= count;
    }
    bool Skip(int count) override {
        const void* data;
        int size;
        while (count > 0) {
            if (!Next(&data, &size)) return false;
            if (size > count) {
                BackUp(size - count);
                return true;
            }
            count -= size;
        }
        return true;
    }
    int64_t ByteCount() const override { return count_; }

  private:
    std::vector<grpc::Slice>& chunks_;
    bool release_;
    size_t cur_ = 0;
    bool started_ = false;
    int backed_up_ = 0;
    int64_t count_ = 0;
};

// The bytes of a length-delimited field: direct when they lie in the current buffer, else
// copied into `scratch`.
bool read_bytes(CodedInputStream& in, uint32_t len, std::string* scratch, const void** data) {
    const void* p;
    int avail;
    if (in.GetDirectBufferPointer(&p, &avail) && static_cast<uint32_t>(avail) >= len) {
        *data = p;
        return in.Skip(static_cast<int>(len));  // within the buffer: no Next(), `p` stays valid
    }
    if (!in.ReadString(scratch, static_cast<int>(len))) return false;
    *data = scratch->data();
    return true;
}

}  // namespace

bool scan(WireResponse& w) {
    w.type_url.clear();
    w.nonce.clear();
    w.system_version_info.clear();
    w.removed.clear();
    w.resources = 0;
    ChunkStream chunks(w.chunks, false);
    CodedInputStream in(&chunks);
    in.SetTotalBytesLimit(INT32_MAX);
    std::string scratch;  // a name straddling two chunks
    for (;;) {
        uint32_t tag = in.ReadTag();
        if (tag == 0) break;
        int field = WireFormatLite::GetTagFieldNumber(tag);
        bool delimited = WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
        if (delimited && field == kResources) {
            uint32_t len;
            if (!in.ReadVarint32(&len) || !in.Skip(static_cast<int>(len))) return false;
            w.resources++;
        } else if (delimited && field == kTypeUrl) {
            if (!WireFormatLite::ReadString(&in, &w.type_url)) return false;
        } else if (delimited && field == kNonce) {
            if (!WireFormatLite::ReadString(&in, &w.nonce)) return false;
        } else if (delimited && field == kSystemVersionInfo) {
            if (!WireFormatLite::ReadString(&in, &w.system_version_info)) return false;
        } else if (delimited && field == kRemovedResources) {
            uint32_t len;
            const void* data;
            if (!in.ReadVarint32(&len) || !read_bytes(in, len, &scratch, &data)) return false;
            w.removed.push_back(std::string_view(static_cast<const char*>(data), len));
        } else if (!WireFormatLite::SkipField(&in, tag)) {
            return false;
        }
    }
    return in.ConsumedEntireMessage();
}

WireResponse to_wire(const DeltaDiscoveryResponse& r) {
    WireResponse w;
    w.chunks.emplace_back(r.SerializeAsString());
    scan(w);
    return w;
}

bool from_wire(const WireResponse& w, DeltaDiscoveryResponse* r) {
    std::string bytes;
    for (const auto& c : w.chunks) bytes.append(reinterpret_cast<const char*>(c.begin()), c.size());
    return r->ParseFromString(bytes);
}

struct ResourceWalker::Impl {
    Impl(WireResponse& w, bool release) : chunks(w.chunks, release), in(&chunks) {
        in.SetTotalBytesLimit(INT32_MAX);
    }
    ChunkStream chunks;
    CodedInputStream in;
    Resource resource;
    std::string scratch;
};

ResourceWalker::ResourceWalker(WireResponse& w, bool release) : impl_(new Impl(w, release)) {}

ResourceWalker::~ResourceWalker() { delete impl_; }

Resource* ResourceWalker::next(bool* ok) {
    CodedInputStream& in = impl_->in;
    for (;;) {
        uint32_t tag = in.ReadTag();
        if (tag == 0) return nullptr;
        if (WireFormatLite::GetTagFieldNumber(tag) != kResources ||
            WireFormatLite::GetTagWireType(tag) != WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
            // scan() has been over these bytes: the framing holds.
            if (!WireFormatLite::SkipField(&in, tag)) return nullptr;
            continue;
        }
        uint32_t len;
        const void* data;
        if (!in.ReadVarint32(&len) || !read_bytes(in, len, &impl_->scratch, &data)) return nullptr;
        *ok = impl_->resource.ParseFromArray(data, static_cast<int>(len));
        return &impl_->resource;
    }
}

}  // namespace kmesh::xds
