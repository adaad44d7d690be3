// proto_subset_check: the oracle of the envoy_api_subset test (docs/kernel-native.md, "The protos and their
// oracle").
//
//   proto_subset_check compare UPSTREAM.pb OURS.pb
//     Every message, field, enum value and RPC that our vendored subset (OURS.pb, built from
//     proto/) declares must exist upstream (UPSTREAM.pb, built from the Envoy API protos that
//     @grpc/grpc-js-xds ships) with the same number, type, label, full type name of message and
//     enum fields and the same oneof. A subset may leave out what it does not use; it may not
//     differ. Files of packages upstream does not have (istio.*) are skipped and counted.
//   proto_subset_check fixtures UPSTREAM.pb FILE.json...
//     Each fixture (a DiscoveryResponse in proto3 JSON, resources as Any) parses strictly with the
//     upstream schema: no unknown field, no unknown enum value, every Any type known. The unit
//     tests read the same files with our subset, so a fixture field the subset does not declare
//     is known to be an upstream field that the converter ignores, never a typo.
//
// Both descriptor sets come from protoc --include_imports --descriptor_set_out; no generated
// code is linked, so nothing of our subset leaks into the oracle.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver_util.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace pb = google::protobuf;

namespace {

struct Pool {
    pb::FileDescriptorSet set;
    pb::SimpleDescriptorDatabase db;
    std::unique_ptr<pb::DescriptorPool> pool;
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::unique_ptr<Pool> load(const std::string& path) {
    auto p = std::make_unique<Pool>();
    if (!p->set.ParseFromString(read_file(path)))
        throw std::runtime_error(path + ": not a FileDescriptorSet");
    for (const auto& f : p->set.file())
        if (!p->db.Add(f)) throw std::runtime_error(path + ": cannot add " + f.name());
    p->pool = std::make_unique<pb::DescriptorPool>(&p->db);
    // Build every file now, so that a broken set fails here and not halfway through a check.
    for (const auto& f : p->set.file())
        if (p->pool->FindFileByName(f.name()) == nullptr)
            throw std::runtime_error(path + ": " + f.name() + " does not build");
    return p;
}

const char* label_name(pb::FieldDescriptor::Label l) {
    switch (l) {
        case pb::FieldDescriptor::LABEL_OPTIONAL:
            return "optional";
        case pb::FieldDescriptor::LABEL_REQUIRED:
            return "required";
        case pb::FieldDescriptor::LABEL_REPEATED:
            return "repeated";
    }
    return "?";
}

std::string type_of(const pb::FieldDescriptor* f) {
    if (f->message_type() != nullptr) return f->message_type()->full_name();
    if (f->enum_type() != nullptr) return f->enum_type()->full_name();
    return f->type_name();
}

struct Checker {
    const pb::DescriptorPool* up;
    std::vector<std::string> errors;
    int messages = 0, fields = 0, enum_values = 0, methods = 0;

    void fail(const std::string& what) { errors.push_back(what); }

    void check_enum(const pb::EnumDescriptor* ours) {
        const auto* theirs = up->FindEnumTypeByName(ours->full_name());
        if (theirs == nullptr) return fail("enum " + ours->full_name() + " does not exist upstream");
        for (int i = 0; i < ours->value_count(); ++i) {
            const auto* v = ours->value(i);
            ++enum_values;
            const auto* u = theirs->FindValueByName(v->name());
            if (u == nullptr) {
                fail(ours->full_name() + "." + v->name() + " does not exist upstream");
            } else if (u->number() != v->number()) {
                fail(ours->full_name() + "." + v->name() + " = " + std::to_string(v->number()) +
                     ", upstream " + std::to_string(u->number()));
            }
        }
    }

    void check_message(const pb::Descriptor* ours) {
        ++messages;
        const auto* theirs = up->FindMessageTypeByName(ours->full_name());
        if (theirs == nullptr) return fail("message " + ours->full_name() + " does not exist upstream");
        for (int i = 0; i < ours->field_count(); ++i) {
            const auto* f = ours->field(i);
            ++fields;
            std::string where =
                ours->full_name() + "." + f->name() + " (" + std::to_string(f->number()) + ")";
            const auto* u = theirs->FindFieldByNumber(f->number());
            if (u == nullptr) {
                const auto* by_name = theirs->FindFieldByName(f->name());
                fail(where + ": no field with this number upstream" +
                     (by_name ? "; upstream's " + f->name() + " is " + std::to_string(by_name->number())
                              : ""));
                continue;
            }
            if (u->name() != f->name())
                fail(where + ": upstream calls field " + std::to_string(f->number()) + " " + u->name());
            if (u->type() != f->type())
                fail(where + ": type " + f->type_name() + ", upstream " + u->type_name());
            if (u->label() != f->label())
                fail(where + ": label " + label_name(f->label()) + ", upstream " + label_name(u->label()));
            if (type_of(u) != type_of(f)) fail(where + ": type " + type_of(f) + ", upstream " + type_of(u));
            const auto* oo = f->real_containing_oneof();
            const auto* uo = u->real_containing_oneof();
            std::string on = oo ? oo->name() : "(none)", un = uo ? uo->name() : "(none)";
            if (on != un) fail(where + ": oneof " + on + ", upstream " + un);
        }
        for (int i = 0; i < ours->nested_type_count(); ++i)
            if (!ours->nested_type(i)->options().map_entry()) check_message(ours->nested_type(i));
        for (int i = 0; i < ours->enum_type_count(); ++i) check_enum(ours->enum_type(i));
    }

    void check_service(const pb::ServiceDescriptor* ours) {
        const auto* theirs = up->FindServiceByName(ours->full_name());
        if (theirs == nullptr) return fail("service " + ours->full_name() + " does not exist upstream");
        for (int i = 0; i < ours->method_count(); ++i) {
            const auto* m = ours->method(i);
            ++methods;
            const auto* u = theirs->FindMethodByName(m->name());
            if (u == nullptr) {
                fail(ours->full_name() + "/" + m->name() + " does not exist upstream");
                continue;
            }
            if (u->input_type()->full_name() != m->input_type()->full_name() ||
                u->output_type()->full_name() != m->output_type()->full_name() ||
                u->client_streaming() != m->client_streaming() ||
                u->server_streaming() != m->server_streaming())
                fail(ours->full_name() + "/" + m->name() + ": signature differs from upstream");
        }
    }
};

int compare(const std::string& up_path, const std::string& ours_path) {
    auto up = load(up_path);
    auto ours = load(ours_path);
    Checker c{up->pool.get()};
    int files = 0, skipped = 0;
    for (const auto& fp : ours->set.file()) {
        const auto* f = ours->pool->FindFileByName(fp.name());
        // Well-known types come from libprotobuf on both sides; istio.* is not an Envoy API.
        if (fp.name().rfind("google/protobuf/", 0) == 0) continue;
        if (fp.package().rfind("istio.", 0) == 0) {
            ++skipped;
            continue;
        }
        ++files;
        for (int i = 0; i < f->message_type_count(); ++i) c.check_message(f->message_type(i));
        for (int i = 0; i < f->enum_type_count(); ++i) c.check_enum(f->enum_type(i));
        for (int i = 0; i < f->service_count(); ++i) c.check_service(f->service(i));
    }
    for (const auto& e : c.errors) std::cout << "MISMATCH: " << e << "\n";
    std::cout << "checked " << files << " files (" << skipped << " non-Envoy skipped): " << c.messages
              << " messages, " << c.fields << " fields, " << c.enum_values << " enum values, " << c.methods
              << " methods; " << c.errors.size() << " mismatches\n";
    // A check that compared nothing proves nothing.
    if (c.fields == 0) {
        std::cout << "FAIL: no field compared\n";
        return 1;
    }
    return c.errors.empty() ? 0 : 1;
}

int fixtures(const std::string& up_path, const std::vector<std::string>& files) {
    auto up = load(up_path);
    std::unique_ptr<pb::util::TypeResolver> resolver(
        pb::util::NewTypeResolverForDescriptorPool("type.googleapis.com", up->pool.get()));
    pb::util::JsonParseOptions opts;
    opts.ignore_unknown_fields = false;
    int bad = 0;
    for (const auto& file : files) {
        std::string binary;
        auto st = pb::util::JsonToBinaryString(
            resolver.get(), "type.googleapis.com/envoy.service.discovery.v3.DiscoveryResponse",
            read_file(file), &binary, opts);
        if (!st.ok()) {
            std::cout << "FIXTURE: " << file << ": " << st.ToString() << "\n";
            ++bad;
        }
    }
    std::cout << files.size() << " fixtures parsed with the upstream schema, " << bad << " refused\n";
    return bad == 0 && !files.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        std::vector<std::string> args(argv + 1, argv + argc);
        if (args.size() == 3 && args[0] == "compare") return compare(args[1], args[2]);
        if (args.size() >= 3 && args[0] == "fixtures")
            return fixtures(args[1], std::vector<std::string>(args.begin() + 2, args.end()));
        std::cerr << "usage: proto_subset_check compare UPSTREAM.pb OURS.pb\n"
                     "       proto_subset_check fixtures UPSTREAM.pb FILE.json...\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "proto_subset_check: " << e.what() << "\n";
        return 1;
    }
}
