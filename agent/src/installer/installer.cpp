#include "agent/src/installer/installer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <limits.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "common/file.hpp"

namespace kmesh::installer {

namespace fs = std::filesystem;

namespace {

constexpr const char* kTempPrefix = ".kmesh-cni.tmp-";  // no config extension: libcni never reads it
constexpr mode_t kBinaryMode = 0755;
constexpr mode_t kKubeconfigMode = 0600;
constexpr time_t kFreshSeconds = 2;  // an unloadable config younger than this may be half-written

struct FileInfo {
    mode_t mode = 0;  // permission bits
    uid_t uid = 0;
    gid_t gid = 0;
    ino_t ino = 0;
    dev_t dev = 0;
    off_t size = 0;
    timespec mtime{};
    bool same_version(const FileInfo& o) const {
        return ino == o.ino && dev == o.dev && size == o.size && mtime.tv_sec == o.mtime.tv_sec &&
               mtime.tv_nsec == o.mtime.tv_nsec;
    }
};

Result<FileInfo> stat_file(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) return errno_status("stat " + path);
    return FileInfo{st.st_mode & 07777, st.st_uid, st.st_gid, st.st_ino, st.st_dev, st.st_size, st.st_mtim};
}

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

Status fsync_dir(const std::string& dir) {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno_status("open " + dir);
    int rc = fsync(fd);
    auto st = rc == 0 ? Status::ok() : errno_status("fsync " + dir);
    close(fd);
    return st;
}

struct Owner {
    uid_t uid;
    gid_t gid;
};

// Temp file in `dir` (same filesystem, so the rename is atomic), given its mode before any byte is
// written, fsync, rename over `name`, fsync of the directory: a reader sees the old file or the new
// one, never a part, even across a crash.
Status atomic_write(const std::string& dir, const std::string& name, std::string_view bytes, mode_t mode,
                    std::optional<Owner> owner = std::nullopt) {
    std::string tmp = dir + "/" + kTempPrefix + "XXXXXX";
    int fd = mkostemp(tmp.data(), O_CLOEXEC);  // created 0600
    if (fd < 0) return errno_status("create a temp file in " + dir);
    auto fail = [&](const std::string& what) {
        auto st = errno_status(what);
        close(fd);
        unlink(tmp.c_str());
        return st;
    };
    if (fchmod(fd, mode) != 0) return fail("chmod " + tmp);
    if (owner && fchown(fd, owner->uid, owner->gid) != 0 && errno != EPERM) return fail("chown " + tmp);
    for (size_t off = 0; off < bytes.size();) {
        ssize_t n = write(fd, bytes.data() + off, bytes.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail("write " + tmp);
        off += static_cast<size_t>(n);
    }
    if (fsync(fd) != 0) return fail("fsync " + tmp);
    if (close(fd) != 0) {
        auto st = errno_status("close " + tmp);
        unlink(tmp.c_str());
        return st;
    }
    std::string path = dir + "/" + name;
    if (rename(tmp.c_str(), path.c_str()) != 0) {
        auto st = errno_status("rename to " + path);
        unlink(tmp.c_str());
        return st;
    }
    return fsync_dir(dir);
}

Status remove_file(const std::string& path) {
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return errno_status("remove " + path);
    return Status::ok();
}

// Names of the entries of `dir` that are not directories (libcni skips directories only).
Result<std::vector<std::string>> list_files(const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return errno_status("open " + dir);
    std::vector<std::string> out;
    while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name == "." || name == "..") continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode)) continue;
        out.push_back(std::move(name));
    }
    closedir(d);
    return out;
}

std::string trim(std::string s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
    size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) i++;
    return s.substr(i);
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? v : "";
}

}  // namespace

Result<std::string> find_cni_binary() {
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        fs::path next = self.parent_path() / "kmesh-cni";
        if (access(next.c_str(), X_OK) == 0) return next.string();
    }
    std::string path = env("PATH");
    for (size_t start = 0; start <= path.size();) {
        size_t end = path.find(':', start);
        if (end == std::string::npos) end = path.size();
        std::string dir = path.substr(start, end - start);
        if (!dir.empty()) {
            std::string candidate = dir + "/kmesh-cni";
            if (access(candidate.c_str(), X_OK) == 0) return candidate;
        }
        start = end + 1;
    }
    return Status(Errc::kNotFound,
                  fmt::format("kmesh-cni is neither next to {} nor on PATH; give --cni-binary",
                              ec ? "this executable" : self.string()));
}

Installer::Installer(Options options) : options_(std::move(options)) {}

std::string Installer::kubeconfig_path() const { return options_.conf_dir + "/" + kKubeconfigName; }

Result<bool> Installer::install_binary() {
    if (binary_.empty()) {
        if (!options_.cni_binary.empty()) {
            binary_ = options_.cni_binary;
        } else {
            auto found = find_cni_binary();
            if (!found) return found.status();
            binary_ = *found;
        }
    }
    auto src = read_file(binary_);
    if (!src) return Status(src.status().code(), "the plugin to install: " + src.status().message());
    std::string dst = options_.bin_dir + "/kmesh-cni";
    if (auto cur = read_file(dst); cur && *cur == *src) {
        auto info = stat_file(dst);
        if (info && info->mode == kBinaryMode) return false;
    }
    std::error_code ec;
    fs::create_directories(options_.bin_dir, ec);
    if (auto st = atomic_write(options_.bin_dir, "kmesh-cni", *src, kBinaryMode); !st) return st;
    return true;
}

Result<Installer::KubeconfigOutcome> Installer::sync_kubeconfig() {
    KubeconfigOutcome out;
    std::string host = env("KUBERNETES_SERVICE_HOST"), port = env("KUBERNETES_SERVICE_PORT");
    // In a cluster or not is decided once, by the environment the kubelet gives every container,
    // and by whether a token was ever there. Inside one, a token or CA that cannot be read now (the
    // kubelet swapping ..data under us, a volume not mounted yet) is an error, never "standalone":
    // dropping kubeConfig from the entry would make kmesh-cni enrol every pod of the node.
    auto token = read_file(options_.sa_dir + "/token");
    const bool in_cluster = !host.empty() && !port.empty();
    const bool had_kubeconfig = fs::exists(kubeconfig_path());
    if (!in_cluster || ((!token || trim(*token).empty()) && !had_kubeconfig)) {
        out.standalone_reason = in_cluster ? fmt::format("no service-account token in {}", options_.sa_dir)
                                           : "KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set";
        return out;
    }
    if (!token || trim(*token).empty())
        return Status(Errc::kUnavailable,
                      fmt::format("cannot read the service-account token in {}; keeping the last kubeconfig",
                                  options_.sa_dir));
    auto ca = read_file(options_.sa_dir + "/ca.crt");
    if (!ca || trim(*ca).empty())
        return Status(Errc::kUnavailable,
                      fmt::format("cannot read the cluster CA {}/ca.crt; without it kmesh-cni would trust "
                                  "any CA: keeping the last kubeconfig",
                                  options_.sa_dir));
    std::string content = kubeconfig_yaml(server_url(host, port), *ca, trim(*token));
    out.path = kubeconfig_path();
    if (auto cur = read_file(*out.path); cur && *cur == content) {
        // Identical bytes but a wider mode (made by hand, or an older version): replace the file
        // rather than chmod it, so it is never readable by others with a token in it.
        if (auto info = stat_file(*out.path); info && info->mode == kKubeconfigMode) return out;
    }
    std::error_code ec;
    fs::create_directories(options_.conf_dir, ec);
    if (auto st = atomic_write(options_.conf_dir, kKubeconfigName, content, kKubeconfigMode); !st) return st;
    out.written = true;
    return out;
}

Result<std::optional<std::string>> Installer::pick_config() {
    const std::string& dir = options_.conf_dir;
    if (!options_.conf_name.empty()) {
        const std::string& n = options_.conf_name;
        if (exists(dir + "/" + n)) return std::optional<std::string>(n);
        // A .conf we turned into a .conflist earlier.
        if (std::string c = chained_name(n);
            c != n && exists(dir + "/" + c) && exists(dir + "/" + saved_name(n)))
            return std::optional<std::string>(c);
        return std::optional<std::string>();
    }
    auto files = list_files(dir);
    if (!files) return files.status();
    for (const auto& name : config_candidates(*files)) {
        auto bytes = read_file(dir + "/" + name);
        Status st = bytes ? validate_config(name, *bytes) : bytes.status();
        if (st) return std::optional<std::string>(name);
        // A file written in place (not renamed into place) can be read half-way. While it is that
        // fresh, wait for its close event (or the next tick) rather than chain the next file.
        if (auto info = stat_file(dir + "/" + name); info) {
            timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            if (now.tv_sec - info->mtime.tv_sec < kFreshSeconds)
                return Status(Errc::kUnavailable,
                              fmt::format("{}/{}: {} (being written?)", dir, name, st.message()));
        }
        // Skipped, as CRI-O and Istio's installer skip it; the runtime would not run it either.
        if (warned_.insert(name + st.message()).second)
            spdlog::warn("cni installer: skipping {}/{}: {}", dir, name, st.message());
    }
    return std::optional<std::string>();
}

Result<Installer::ChainOutcome> Installer::sync_chain(const std::optional<std::string>& kube_config) {
    const std::string& dir = options_.conf_dir;
    auto picked = pick_config();
    if (!picked) return picked.status();
    if (!*picked) return ChainOutcome{};
    const std::string name = **picked, path = dir + "/" + name;
    auto before = stat_file(path);
    if (!before) return before.status();
    auto bytes = read_file(path);
    if (!bytes) return bytes.status();
    ChainEntry entry;
    entry.kube_config = kube_config;
    entry.kmesh_namespace = options_.kmesh_namespace;
    entry.bpffs_root = options_.bpffs_root;
    entry.log_file = options_.log_file;
    entry.exclude_namespaces = options_.exclude_namespaces;
    entry.agent_socket = options_.agent_socket;
    auto chained = chain(name, *bytes, entry);
    if (!chained) return chained.status();
    if (!chained->changed) return ChainOutcome{Outcome::kUnchanged, name};
    const std::string& target = chained->name;
    if (target != name && exists(dir + "/" + target) && !exists(dir + "/" + saved_name(name)))
        return Status(Errc::kAlreadyExists,
                      fmt::format("cannot turn {} into {}: {} exists and the installer did not write it",
                                  name, target, target));
    Owner owner{before->uid, before->gid};
    // The primary's bytes, saved before the first change, so that uninstall can put them back.
    if (!chained->had_entry)
        if (auto st = atomic_write(dir, saved_name(name), *bytes, before->mode, owner); !st) return st;
    // The primary may have rewritten the file since we read it: writing now would lose its version.
    // (A write landing between this check and the rename is caught by the event it makes.)
    if (auto now = stat_file(path); !now || !now->same_version(*before))
        return Status(Errc::kUnavailable,
                      fmt::format("{} changed while it was being chained; trying again", path));
    if (auto st = atomic_write(dir, target, chained->bytes, before->mode, owner); !st) return st;
    if (target != name)
        if (auto st = remove_file(path); !st) return st;
    return ChainOutcome{Outcome::kWritten, target};
}

Status Installer::install() {
    if (auto b = install_binary(); !b) return b.status();
    auto kube = sync_kubeconfig();
    if (!kube) return kube.status();
    if (!kube->path)
        spdlog::info(
            "cni installer: standalone mode ({}): no kubeconfig; kmesh-cni will enrol every pod in the chain",
            kube->standalone_reason);
    for (int attempt = 0;; attempt++) {
        auto r = sync_chain(kube->path);
        if (!r && r.status().code() == Errc::kUnavailable && attempt < 10) {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the primary is writing
            continue;
        }
        if (!r) return r.status();
        if (r->outcome == Outcome::kNoConfig)
            return Status(Errc::kNotFound,
                          fmt::format("no CNI config to chain into in {}{}", options_.conf_dir,
                                      options_.conf_name.empty() ? "" : " named " + options_.conf_name));
        spdlog::info("cni installer: kmesh-cni chained into {}/{}{}", options_.conf_dir, r->file,
                     r->outcome == Outcome::kUnchanged ? " (already)" : "");
        return Status::ok();
    }
}

Status Installer::uninstall() {
    const std::string& dir = options_.conf_dir;
    std::vector<std::string> problems;
    auto note = [&](const Status& st) {
        if (!st) problems.push_back(st.message());
    };
    auto files = list_files(dir);
    if (!files && files.status().code() != Errc::kNotFound) return files.status();
    std::vector<std::string> names = files ? *files : std::vector<std::string>{};
    for (const auto& file : names) {
        if (file.starts_with(kTempPrefix)) {
            note(remove_file(dir + "/" + file));  // left by a crash mid-write
            continue;
        }
        auto original_name = config_of_saved(file);
        if (!original_name) continue;
        const std::string saved_path = dir + "/" + file, n = *original_name, p = chained_name(n);
        auto saved = read_file(saved_path);
        auto saved_info = stat_file(saved_path);
        if (!saved || !saved_info) {
            note(saved ? saved_info.status() : saved.status());
            continue;
        }
        if (auto cur = read_file(dir + "/" + p); cur) {
            bool ours = is_chain_of(n, *saved, *cur);
            if (p != n && exists(dir + "/" + n)) {
                // The primary wrote its .conf again since: that is its current config, ours is stale.
                if (ours) {
                    note(remove_file(dir + "/" + p));
                } else if (auto u = unchain(*cur); u && u->changed) {
                    auto info = stat_file(dir + "/" + p);
                    note(atomic_write(dir, p, u->bytes, info ? info->mode : saved_info->mode));
                }
            } else if (ours) {
                // Exactly what we made of it: put the primary's own bytes and name back.
                Status st =
                    atomic_write(dir, n, *saved, saved_info->mode, Owner{saved_info->uid, saved_info->gid});
                note(st);
                if (st && p != n) note(remove_file(dir + "/" + p));
            }
            // Otherwise someone changed the file after us: the sweep below removes just our entry.
        }
        note(remove_file(saved_path));
    }
    // Our entry in any other config (a file rewritten after we chained it, one chained by hand, an
    // older primary): taken out, the rest kept.
    if (auto again = list_files(dir); again) {
        for (const auto& name : config_candidates(*again)) {
            auto bytes = read_file(dir + "/" + name);
            if (!bytes) continue;
            auto u = unchain(*bytes);
            if (!u) {
                if (u.status().code() == Errc::kInvalidArgument)
                    note(Status(u.status().code(), name + ": " + u.status().message()));
                continue;  // not JSON: not ours to touch
            }
            if (!u->changed) continue;
            auto info = stat_file(dir + "/" + name);
            note(atomic_write(dir, name, u->bytes, info ? info->mode : 0644,
                              info ? std::optional<Owner>(Owner{info->uid, info->gid}) : std::nullopt));
        }
    }
    note(remove_file(kubeconfig_path()));
    note(remove_file(options_.bin_dir + "/kmesh-cni"));
    if (auto bins = list_files(options_.bin_dir); bins)
        for (const auto& f : *bins)
            if (f.starts_with(kTempPrefix)) note(remove_file(options_.bin_dir + "/" + f));
    if (problems.empty()) return Status::ok();
    std::string msg;
    for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
    return Status(Errc::kIo, msg);
}

// ---- Watcher

namespace {

constexpr uint32_t kConfMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM;
// The kubelet updates a projected token by swapping the "..data" symlink (a rename into the dir).
constexpr uint32_t kSaMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE;
constexpr int kTickMs = 2000;
// Events come in bursts (a temp file written, then renamed): wait this long for quiet before a
// pass, up to kMaxSettleMs, so a file being written in place is rarely read half-way.
constexpr int kSettleMs = 50, kMaxSettleMs = 300;

// Drains the inotify fd; false when a watch went away (its directory deleted).
bool drain(int fd, int* conf_wd, int* sa_wd) {
    alignas(inotify_event) char buf[16384];
    bool all_there = true;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) break;
        for (char* p = buf; p < buf + n;) {
            auto* ev = reinterpret_cast<inotify_event*>(p);
            if (ev->mask & IN_IGNORED) {
                if (ev->wd == *conf_wd) *conf_wd = -1;
                if (ev->wd == *sa_wd) *sa_wd = -1;
                all_there = false;
            }
            p += sizeof(inotify_event) + ev->len;
        }
    }
    return all_there;
}

}  // namespace

Watcher::Watcher(Options options) : installer_(std::move(options)) {}

Result<std::unique_ptr<Watcher>> Watcher::start(Options options) {
    std::unique_ptr<Watcher> w(new Watcher(std::move(options)));
    w->inotify_fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->inotify_fd_ < 0) return errno_status("inotify_init1");
    w->stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->stop_fd_ < 0) return errno_status("eventfd");
    Watcher* self = w.get();
    w->thread_ = std::thread([self] { self->loop(); });
    return w;
}

Watcher::~Watcher() {
    if (thread_.joinable()) {
        uint64_t one = 1;
        if (write(stop_fd_, &one, sizeof one) < 0)
            spdlog::warn("cni installer: eventfd: {}", std::strerror(errno));
        thread_.join();
    }
    if (inotify_fd_ >= 0) close(inotify_fd_);
    if (stop_fd_ >= 0) close(stop_fd_);
}

void Watcher::pass(bool check_binary) {
    const Options& o = installer_.options();
    std::string error;
    auto note = [&](const std::string& e) {
        if (error.empty()) error = e;
    };
    // Watches first, so that nothing written between the pass and the watch goes unseen.
    if (conf_wd_ < 0) {
        std::error_code ec;
        fs::create_directories(o.conf_dir, ec);
        conf_wd_ = inotify_add_watch(inotify_fd_, o.conf_dir.c_str(), kConfMask | IN_ONLYDIR);
        if (conf_wd_ < 0) note(errno_status("watch " + o.conf_dir).message());
    }
    if (sa_wd_ < 0)
        sa_wd_ = inotify_add_watch(inotify_fd_, o.sa_dir.c_str(), kSaMask | IN_ONLYDIR);  // may not exist

    if (check_binary) {
        if (auto b = installer_.install_binary(); !b)
            note(b.status().message());
        else if (*b)
            spdlog::info("cni installer: kmesh-cni installed in {}", o.bin_dir);
    }
    std::optional<std::string> kube;
    if (auto k = installer_.sync_kubeconfig(); !k) {
        note(k.status().message());
        if (exists(installer_.kubeconfig_path()))
            kube = installer_.kubeconfig_path();  // the last one written
    } else {
        kube = k->path;
        bool standalone = !k->path;
        if (standalone_ != standalone) {
            standalone_ = standalone;
            if (standalone)
                spdlog::info(
                    "cni installer: standalone mode ({}): no kubeconfig; kmesh-cni will enrol every pod in "
                    "the chain",
                    k->standalone_reason);
        }
        if (k->written) spdlog::info("cni installer: kubeconfig for kmesh-cni written to {}", *k->path);
    }
    auto r = installer_.sync_chain(kube);
    if (!r) {
        // A concurrent write by the primary: its own event brings us back at once.
        if (r.status().code() != Errc::kUnavailable) note(r.status().message());
    } else if (r->outcome == Installer::Outcome::kNoConfig) {
        if (!waiting_logged_) spdlog::info("cni installer: waiting for a CNI config in {}", o.conf_dir);
        waiting_logged_ = true;
    } else {
        waiting_logged_ = false;
        if (r->outcome == Installer::Outcome::kWritten)
            spdlog::info("cni installer: kmesh-cni chained into {}/{}", o.conf_dir, r->file);
    }
    if (error != last_error_) {
        if (!error.empty()) spdlog::error("cni installer: {}", error);
        last_error_ = error;
    }
}

void Watcher::loop() {
    using Clock = std::chrono::steady_clock;
    pass(true);
    auto next_tick = Clock::now() + std::chrono::milliseconds(kTickMs);
    for (;;) {
        int timeout = static_cast<int>(std::max<int64_t>(
            0, std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - Clock::now()).count()));
        pollfd fds[2] = {{stop_fd_, POLLIN, 0}, {inotify_fd_, POLLIN, 0}};
        int n = poll(fds, 2, timeout);
        if (n < 0 && errno != EINTR) {
            spdlog::error("cni installer: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[0].revents & POLLIN) return;
        if (n > 0 && (fds[1].revents & POLLIN)) {
            drain(inotify_fd_, &conf_wd_, &sa_wd_);
            auto settle_until = Clock::now() + std::chrono::milliseconds(kMaxSettleMs);
            while (Clock::now() < settle_until) {
                pollfd again{inotify_fd_, POLLIN, 0};
                if (poll(&again, 1, kSettleMs) <= 0) break;
                drain(inotify_fd_, &conf_wd_, &sa_wd_);
            }
            pass(false);
        }
        if (Clock::now() >= next_tick) {
            // The full binary comparison reads both files: on the tick only when the copy looks off.
            struct stat st;
            std::string bin = installer_.options().bin_dir + "/kmesh-cni";
            bool check = stat(bin.c_str(), &st) != 0 || (st.st_mode & 07777) != kBinaryMode;
            pass(check);
            next_tick = Clock::now() + std::chrono::milliseconds(kTickMs);
        }
    }
}

}  // namespace kmesh::installer
