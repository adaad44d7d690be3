#include "common/cgroup.hpp"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

namespace kmesh {

namespace fs = std::filesystem;

namespace {

// mountinfo escapes space, tab, newline and backslash in paths as \ooo octal.
std::string unescape_mount_path(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() &&
            std::all_of(s.begin() + i + 1, s.begin() + i + 4, [](char c) { return c >= '0' && c <= '7'; })) {
            out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

std::string systemd_uid(std::string_view uid) {
    std::string out(uid);
    std::replace(out.begin(), out.end(), '-', '_');
    return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A directory that is some pod's cgroup; the search does not descend into those (their children are
// containers, never other pods).
bool looks_like_pod_cgroup(const std::string& name) {
    return name.starts_with("pod") || (name.find("-pod") != std::string::npos && ends_with(name, ".slice"));
}

bool is_real_dir(const fs::path& p) {
    std::error_code ec;
    return fs::is_directory(fs::symlink_status(p, ec));
}

}  // namespace

std::optional<std::string> find_cgroup2_mount(std::string_view mountinfo) {
    std::optional<std::string> subtree_mount;
    std::istringstream in{std::string(mountinfo)};
    std::string line;
    while (std::getline(in, line)) {
        // id parent major:minor root mount-point options [optional fields...] - fstype source super-options
        std::istringstream fields(line);
        std::vector<std::string> f;
        for (std::string w; fields >> w;) f.push_back(std::move(w));
        auto sep = std::find(f.begin(), f.end(), "-");
        if (f.size() < 6 || sep == f.end() || sep - f.begin() < 6 || sep + 1 == f.end()) continue;
        if (*(sep + 1) != "cgroup2") continue;
        std::string mount_point = unescape_mount_path(f[4]);
        if (f[3] == "/") return mount_point;
        if (!subtree_mount) subtree_mount = std::move(mount_point);
    }
    return subtree_mount;
}

std::optional<std::string> find_cgroup2_mount() {
    std::ifstream in("/proc/self/mountinfo");
    if (!in) return std::nullopt;
    std::stringstream text;
    text << in.rdbuf();
    return find_cgroup2_mount(text.str());
}

PodCgroupLookup find_pod_cgroup(const fs::path& cgroup_root, std::string_view pod_uid, int max_depth,
                                int max_dirs) {
    const std::string uid(pod_uid);
    const std::string uid_ = systemd_uid(pod_uid);
    const std::string cgroupfs_name = "pod" + uid;
    const std::string systemd_suffix = "-pod" + uid_ + ".slice";

    PodCgroupLookup result;
    const std::string candidates[] = {
        "kubepods/" + cgroupfs_name,
        "kubepods/burstable/" + cgroupfs_name,
        "kubepods/besteffort/" + cgroupfs_name,
        "kubepods.slice/kubepods-pod" + uid_ + ".slice",
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable" + systemd_suffix,
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort" + systemd_suffix,
    };
    for (const auto& rel : candidates) {
        fs::path p = cgroup_root / rel;
        result.tried.push_back(p.string());
        if (is_real_dir(p)) {
            result.path = std::move(p);
            return result;
        }
    }

    // Breadth-first, so the shallowest match wins; symlinks are not followed.
    std::deque<std::pair<fs::path, int>> queue{{cgroup_root, 0}};
    for (int listed = 0; !queue.empty() && listed < max_dirs; ++listed) {
        auto [dir, depth] = std::move(queue.front());
        queue.pop_front();
        std::error_code ec;
        for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
            const fs::path& p = it->path();
            if (!is_real_dir(p)) continue;
            const std::string name = p.filename().string();
            if (name == cgroupfs_name || ends_with(name, systemd_suffix)) {
                result.path = p;
                return result;
            }
            if (depth + 1 < max_depth && !looks_like_pod_cgroup(name)) queue.emplace_back(p, depth + 1);
        }
    }
    return result;
}

std::optional<std::uint64_t> cgroup_id(const fs::path& dir) {
    // On cgroup v2 the 8-byte file handle of a cgroup directory is its kernel cgroup id.
    alignas(struct file_handle) unsigned char buf[sizeof(struct file_handle) + sizeof(std::uint64_t)] = {};
    auto* handle = reinterpret_cast<struct file_handle*>(buf);
    handle->handle_bytes = sizeof(std::uint64_t);
    int mount_id = 0;
    if (name_to_handle_at(AT_FDCWD, dir.c_str(), handle, &mount_id, 0) != 0) return std::nullopt;
    if (handle->handle_bytes != sizeof(std::uint64_t)) {
        errno = EINVAL;
        return std::nullopt;
    }
    std::uint64_t id = 0;
    std::memcpy(&id, handle->f_handle, sizeof(id));
    return id;
}

}  // namespace kmesh
