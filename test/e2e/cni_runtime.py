#!/usr/bin/env python3
"""Runs a CNI conflist the way a container runtime (libcni) does, for the end-to-end tests.

ADD runs the plugins in order, feeding each one's result to the next as prevResult, and caches the
final result; CHECK and DEL feed the cached result to every plugin (DEL in reverse order).
Prints the final result (ADD) and exits non-zero with the plugin's error object on failure.
"""
import argparse
import json
import os
import subprocess
import sys


def run_plugin(plugin, conf, env, stdin):
    for d in env["CNI_PATH"].split(":"):
        path = os.path.join(d, plugin)
        if os.access(path, os.X_OK):
            break
    else:
        sys.exit(f"plugin {plugin} not found in {env['CNI_PATH']}")
    p = subprocess.run([path], input=json.dumps(stdin).encode(), env=env, capture_output=True)
    if p.returncode != 0:
        sys.stdout.write(p.stdout.decode() + "\n")
        sys.stderr.write(f"{plugin} {env['CNI_COMMAND']} failed ({p.returncode}): {p.stderr.decode()}\n")
        sys.exit(1)
    return json.loads(p.stdout) if p.stdout.strip() else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["ADD", "DEL", "CHECK"])
    ap.add_argument("--conflist", required=True)
    ap.add_argument("--netns", default="")
    ap.add_argument("--container-id", required=True)
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--args", default="")
    ap.add_argument("--cni-path", required=True)
    ap.add_argument("--cache-dir", required=True)
    a = ap.parse_args()

    conflist = json.load(open(a.conflist))
    cache = os.path.join(a.cache_dir, a.container_id + ".json")
    env = dict(os.environ, CNI_COMMAND=a.command, CNI_CONTAINERID=a.container_id, CNI_NETNS=a.netns,
               CNI_IFNAME=a.ifname, CNI_ARGS=a.args, CNI_PATH=a.cni_path)
    plugins = conflist["plugins"]
    cached = json.load(open(cache)) if os.path.exists(cache) else None

    prev = None if a.command == "ADD" else cached
    for plugin in (reversed(plugins) if a.command == "DEL" else plugins):
        stdin = dict(plugin, cniVersion=conflist["cniVersion"], name=conflist["name"])
        if prev is not None:
            stdin["prevResult"] = prev
        out = run_plugin(plugin["type"], stdin, env, stdin)
        if a.command == "ADD":
            prev = out

    if a.command == "ADD":
        os.makedirs(a.cache_dir, exist_ok=True)
        json.dump(prev, open(cache, "w"))
        print(json.dumps(prev))
    elif a.command == "DEL" and os.path.exists(cache):
        os.unlink(cache)


if __name__ == "__main__":
    main()
