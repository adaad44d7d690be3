// A fake of the pod-link kernel seam (common/pod_links.hpp) over a temp dir standing in for bpffs.
#pragma once

#include <doctest/doctest.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "common/pod_links.hpp"

namespace kmesh::test {

// Pins are files holding an object id; fds map to objects. A link stays attached while a pin or an
// open fd refers to it.
class FakeKernel : public kmesh::Kernel {
  public:
    struct Object {
        enum Kind { kProg, kLink, kCgroup, kNetns } kind;
        std::uint32_t prog_id = 0;
        std::uint64_t cgroup_id = 0;
        std::uint32_t attach_type = 0;
        bool netns = false;           // a netns link (or, kind kNetns, the namespace itself)
        std::uint64_t netns_ino = 0;  // 0 once the namespace is gone
    };

    std::map<std::uint32_t, Object> objects;
    std::map<int, std::uint32_t> fds;
    std::optional<bpf_attach_type> fail_link_type;
    std::set<std::string> missing_netns;  // paths open_netns fails with -ENOENT
    int fail_link_update = 0;             // -errno returned by link_update when non-zero
    int link_creates = 0;
    int link_updates = 0;

    std::uint32_t pin_new_prog(const std::string& path) {
        std::uint32_t id = next_id_++;
        objects[id] = {Object::kProg};
        std::filesystem::create_directories(std::filesystem::path(path).parent_path());
        std::ofstream(path, std::ios::trunc) << id;
        return id;
    }

    int obj_get(const std::string& path) override {
        std::ifstream in(path);
        std::uint32_t id = 0;
        if (!(in >> id)) return -ENOENT;
        return new_fd(id);
    }
    int obj_pin(int fd, const std::string& path) override {
        if (std::filesystem::exists(path)) return -EEXIST;
        if (!std::filesystem::is_directory(std::filesystem::path(path).parent_path())) return -ENOENT;
        std::ofstream(path) << fds.at(fd);
        return 0;
    }
    int open_cgroup(const std::string& dir, std::uint64_t* cgroup_id) override {
        if (!std::filesystem::is_directory(dir)) return -ENOENT;
        auto [it, added] = cgroups_.try_emplace(std::filesystem::canonical(dir).string(), 0);
        if (added) {
            it->second = next_id_++;
            objects[it->second] = {Object::kCgroup, 0, 1000 + it->second};
        }
        *cgroup_id = objects[it->second].cgroup_id;
        return new_fd(it->second);
    }
    // Any path not in missing_netns is a namespace; one inode per path.
    int open_netns(const std::string& path, std::uint64_t* netns_ino) override {
        if (missing_netns.count(path)) return -ENOENT;
        auto [it, added] = netns_.try_emplace(path, 0);
        if (added) {
            it->second = next_id_++;
            objects[it->second] = {Object::kNetns, 0, 0, 0, true, 5000 + it->second};
        }
        *netns_ino = objects[it->second].netns_ino;
        return new_fd(it->second);
    }
    std::uint64_t netns_ino_of(const std::string& path) {
        std::uint64_t ino = 0;
        int fd = open_netns(path, &ino);
        REQUIRE(fd >= 0);
        close(fd);
        return ino;
    }
    // The namespace is destroyed: its links report netns_ino 0 (the kernel auto-detaches them).
    void destroy_netns(const std::string& path) {
        const std::uint64_t ino = netns_ino_of(path);
        for (auto& [id, o] : objects)
            if (o.kind == Object::kLink && o.netns && o.netns_ino == ino) o.netns_ino = 0;
        objects.erase(netns_.at(path));
        netns_.erase(path);
    }
    int link_create(int prog_fd, int cgroup_fd, bpf_attach_type type) override {
        ++link_creates;
        if (type == fail_link_type) return -EPERM;
        const Object& prog = objects.at(fds.at(prog_fd));
        const Object& target = objects.at(fds.at(cgroup_fd));
        REQUIRE(prog.kind == Object::kProg);
        std::uint32_t id = next_id_++;
        if (type == BPF_SK_LOOKUP) {
            REQUIRE(target.kind == Object::kNetns);
            objects[id] = {Object::kLink, fds.at(prog_fd), 0, static_cast<std::uint32_t>(type),
                           true,          target.netns_ino};
        } else {
            REQUIRE(target.kind == Object::kCgroup);
            objects[id] = {Object::kLink, fds.at(prog_fd), target.cgroup_id,
                           static_cast<std::uint32_t>(type)};
        }
        return new_fd(id);
    }
    int link_update(int link_fd, int prog_fd) override {
        ++link_updates;
        if (fail_link_update != 0) return fail_link_update;
        Object& link = objects.at(fds.at(link_fd));
        REQUIRE(link.kind == Object::kLink);
        REQUIRE(objects.at(fds.at(prog_fd)).kind == Object::kProg);
        if (link.netns ? link.netns_ino == 0 : link.cgroup_id == 0) return -ENOLINK;
        link.prog_id = fds.at(prog_fd);
        return 0;
    }
    int prog_id(int prog_fd, std::uint32_t* id) override {
        *id = fds.at(prog_fd);
        return objects.at(*id).kind == Object::kProg ? 0 : -EINVAL;
    }
    int link_info(int link_fd, kmesh::LinkInfo* info) override {
        const Object& o = objects.at(fds.at(link_fd));
        if (o.kind != Object::kLink) return -EINVAL;
        *info = {o.prog_id, o.cgroup_id, o.attach_type, o.netns, o.netns_ino};
        return 0;
    }
    void close(int fd) override { CHECK(fds.erase(fd) == 1); }
    // Filesystem types by path; other existing paths are tmpfs.
    std::map<std::string, long> magic;
    long fs_magic(const std::string& path) override {
        if (auto it = magic.find(path); it != magic.end()) return it->second;
        return std::filesystem::exists(path) ? 0x01021994 /* TMPFS_MAGIC */ : -ENOENT;
    }
    // Links currently attached to a netns (not detached, referenced by a pin or fd).
    int attached_netns_links(std::uint64_t ino, const std::filesystem::path& bpffs) {
        std::set<std::uint32_t> pinned = referenced(bpffs);
        int n = 0;
        for (auto id : pinned) {
            auto it = objects.find(id);
            if (it != objects.end() && it->second.kind == Object::kLink && it->second.netns &&
                it->second.netns_ino == ino)
                ++n;
        }
        return n;
    }
    std::set<std::uint32_t> referenced(const std::filesystem::path& bpffs) {
        std::set<std::uint32_t> pinned;
        for (const auto& e : std::filesystem::recursive_directory_iterator(bpffs)) {
            if (!e.is_regular_file()) continue;
            std::ifstream in(e.path());
            std::uint32_t id = 0;
            if (in >> id) pinned.insert(id);
        }
        for (const auto& [fd, id] : fds) pinned.insert(id);
        return pinned;
    }
    // Links currently attached to a cgroup (not detached, still referenced by a pin or fd).
    int attached_links(std::uint64_t cgroup_id, const std::filesystem::path& bpffs) {
        std::set<std::uint32_t> pinned;
        for (const auto& e : std::filesystem::recursive_directory_iterator(bpffs)) {
            if (!e.is_regular_file()) continue;
            std::ifstream in(e.path());
            std::uint32_t id = 0;
            if (in >> id) pinned.insert(id);
        }
        for (const auto& [fd, id] : fds) pinned.insert(id);
        int n = 0;
        for (auto id : pinned) {
            auto it = objects.find(id);
            if (it != objects.end() && it->second.kind == Object::kLink && !it->second.netns &&
                it->second.cgroup_id == cgroup_id)
                ++n;
        }
        return n;
    }

  private:
    int new_fd(std::uint32_t id) {
        fds[next_fd_] = id;
        return next_fd_++;
    }
    std::map<std::string, std::uint32_t> cgroups_;  // cgroup dir -> object id
    std::map<std::string, std::uint32_t> netns_;    // netns path -> object id
    int next_fd_ = 100;
    std::uint32_t next_id_ = 1;
};

}  // namespace kmesh::test
