#include "agent/src/admin/version_view.hpp"

#include <bpf/bpf.h>
#include <fmt/format.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <filesystem>

#include "common/pod_links.hpp"

namespace fs = std::filesystem;

namespace kmesh::admin {

namespace {

// A link's program id, or 0 when the pin is not a link or its cgroup/netns is gone.
uint32_t attached_prog_id(const std::string& path) {
    int fd = bpf_obj_get(path.c_str());
    if (fd < 0) return 0;
    bpf_link_info info{};
    uint32_t len = sizeof info;
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    close(fd);
    if (rc != 0) return 0;
    if (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id == 0) return 0;
    if (info.type == BPF_LINK_TYPE_NETNS && info.netns.netns_ino == 0) return 0;
    return info.prog_id;
}

void count_dir(const fs::path& dir, const std::set<uint32_t>& prog_ids, PodLinkCount* out) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        std::error_code e;
        if (!entry.is_regular_file(e)) continue;  // link pins show as files; records' dirs do not
        uint32_t id = attached_prog_id(entry.path().string());
        if (id == 0) continue;
        out->total++;
        if (prog_ids.count(id)) out->on_loaded++;
    }
}

}  // namespace

PodLinkCount count_pod_links(const std::string& pods_dir, const std::set<uint32_t>& prog_ids) {
    PodLinkCount out;
    std::error_code ec;
    for (const auto& pod : fs::directory_iterator(pods_dir, ec)) {
        count_dir(pod.path(), prog_ids, &out);
        std::error_code e;
        for (const auto& user : fs::directory_iterator(pod.path() / kUsersDir, e))
            count_dir(user.path(), prog_ids, &out);
    }
    return out;
}

std::string version_json(const VersionInfo& v) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    auto str = [&](const char* key, const std::string& s) {
        w.Key(key);
        w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
    };
    w.StartObject();
    str("version", KMESH_VERSION);
    w.Key("programs");
    w.StartObject();
    str("sha256", v.build.sha256);
    w.Key("object_bytes");
    w.Uint64(v.build.object_bytes);
    w.Key("test_variant");
    w.Bool(v.build.test_variant);
    w.Key("loaded");
    w.StartArray();
    for (const auto& p : v.programs) {
        w.StartObject();
        str("name", p.name);
        w.Key("id");
        w.Uint(p.id);
        str("tag", p.tag);
        w.EndObject();
    }
    w.EndArray();
    w.EndObject();
    w.Key("maps");
    w.StartObject();
    w.Key("abi");
    w.Uint(v.abi);
    w.Key("version");
    w.Uint(v.maps_version);
    str("dir", v.maps_dir);
    w.EndObject();
    w.Key("published");
    w.Bool(v.published);
    w.Key("pod_links");
    w.StartObject();
    w.Key("total");
    w.Int(v.pod_links.total);
    w.Key("on_loaded_programs");
    w.Int(v.pod_links.on_loaded);
    w.EndObject();
    w.EndObject();
    return buf.GetString();
}

std::string build_info_metric(const VersionInfo& v) {
    // Label values are digits, hex and the release string (digits and dots): nothing to escape.
    return fmt::format(
        "# HELP kmesh_build_info The running agent: release, map layout (abi: compiled for; maps_version: "
        "in use) and programs (SHA-256 prefix of the embedded BPF object). Always 1.\n"
        "# TYPE kmesh_build_info gauge\n"
        "kmesh_build_info{{version=\"{}\",abi=\"{}\",maps_version=\"{}\",programs=\"{}\"}} 1\n",
        KMESH_VERSION, v.abi, v.maps_version, v.build.short_id());
}

}  // namespace kmesh::admin
