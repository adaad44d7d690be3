// The CNI installer: puts kmesh-cni into the node's CNI bin dir, chains it into the config the
// runtime reads (chain.hpp has the rules), writes the plugin's kubeconfig, and keeps all of it in
// place while the agent runs (Watcher). `kmesh-daemon cni install|uninstall` runs one pass.
//
// Every file is written atomically: a temp file in the target's own directory (a dotfile whose name
// libcni never reads), fsync, rename, fsync of the directory. A restart of the agent removes
// nothing: pods keep being created while it is down, and they need the plugin and the chain.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/src/installer/chain.hpp"
#include "common/status.hpp"

namespace kmesh::installer {

struct Options {
    std::string bin_dir = "/opt/cni/bin";
    std::string conf_dir = "/etc/cni/net.d";
    std::string conf_name;   // empty: the file the runtime would pick
    std::string cni_binary;  // empty: kmesh-cni next to this executable, else on PATH
    std::string sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    std::string kmesh_namespace = "kmesh-system";
    std::string bpffs_root = kDefaultBpffsRoot;
    std::string log_file = "/var/log/kmesh-cni.log";
    // Namespaces kmesh-cni enrols without asking the API (never blocked); the agent's reconciler
    // skips the same ones.
    std::vector<std::string> exclude_namespaces{"kube-system"};
    // The agent's --cni-socket, where kmesh-cni asks whether a pod is in the mesh before it asks
    // the API server (the plugin's agentSocket); empty: not written.
    std::string agent_socket;
};

// kmesh-cni next to /proc/self/exe, else the first on PATH.
Result<std::string> find_cni_binary();

class Installer {
  public:
    explicit Installer(Options options);

    // Copies the plugin into the bin dir (mode 0755) unless identical bytes are already there.
    // True when it wrote.
    Result<bool> install_binary();
    // In a cluster (service-account token and KUBERNETES_SERVICE_HOST/PORT): writes the kubeconfig
    // (created 0600) when its content differs. Outside one: nothing (standalone mode).
    struct KubeconfigOutcome {
        std::optional<std::string> path;  // nullopt: standalone mode
        bool written = false;
        std::string standalone_reason;  // why there is none
    };
    Result<KubeconfigOutcome> sync_kubeconfig();

    enum class Outcome { kNoConfig, kUnchanged, kWritten };
    struct ChainOutcome {
        Outcome outcome = Outcome::kNoConfig;
        std::string file;  // the chained file
    };
    // Chains the entry into the file the runtime reads (or --cni-conf-name). kNoConfig when there is
    // no (loadable) config yet. `kube_config`: from sync_kubeconfig(). kUnavailable when the file
    // changed between our read and our write (the primary wrote it): nothing is written, try again.
    Result<ChainOutcome> sync_chain(const std::optional<std::string>& kube_config);

    // One pass of all three (the `cni install` subcommand); fails when there is no config to chain.
    Status install();
    // Takes the entry out of every config that has it (restoring a saved original byte for byte when
    // the file is still exactly what the installer made of it), removes the saved originals, the
    // kubeconfig and the plugin.
    Status uninstall();

    const Options& options() const { return options_; }
    std::string kubeconfig_path() const;

  private:
    Result<std::optional<std::string>> pick_config();
    Options options_;
    std::string binary_;            // resolved source of the plugin
    std::set<std::string> warned_;  // skipped configs already logged
};

// Keeps the installation in place while the agent runs: inotify on the conf dir (and the service
// account dir, for token rotation), plus a 2 s tick that catches what events cannot (a watch that
// failed, an overflowed queue, a deleted bin). Runs on its own thread.
class Watcher {
  public:
    static Result<std::unique_ptr<Watcher>> start(Options options);
    ~Watcher();  // stops the thread
    Watcher(const Watcher&) = delete;
    Watcher& operator=(const Watcher&) = delete;

  private:
    explicit Watcher(Options options);
    void loop();
    void pass(bool check_binary);

    Installer installer_;
    int inotify_fd_ = -1, stop_fd_ = -1;
    int conf_wd_ = -1, sa_wd_ = -1;
    std::string last_error_;  // logged once until it changes
    bool waiting_logged_ = false, mode_logged_ = false;
    std::optional<bool> standalone_;
    std::thread thread_;
};

}  // namespace kmesh::installer
