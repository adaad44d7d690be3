#!/usr/bin/env python3
"""A small fake Kubernetes API server for tests (python3 stdlib only): HTTPS, bearer-token auth,
core/v1 pods and namespaces with real-shaped JSON, watch streams with bookmarks, and faults on
demand. It stands in for kube-apiserver, which cannot run on these machines.

Start (test/kube/lib.sh `kube_fake_start DIR` does all of this: CA, server cert, token, kubeconfig):
    fake_apiserver.py --cert server.crt --key server.key --token-file token --port-file port \
        [--host 127.0.0.1] [--port 0] [--fixtures DIR] [--bookmark-interval 1.0] [--client-ca ca.crt]
  The chosen port is written to --port-file once the server listens. The token file is re-read on
  every request (rewrite it to rotate the token). With --client-ca, a client certificate signed by
  that CA authenticates too (instead of the token). --fixtures loads every *.json in DIR (a Pod, a
  Namespace, or a List of them) at start.

Kubernetes API (bearer token required, else 401 with a Status object):
    GET   /api/v1/namespaces/{ns}/pods/{name}          pod
    PATCH /api/v1/namespaces/{ns}/pods/{name}          Content-Type application/merge-patch+json
                                                       (RFC 7386; a change bumps resourceVersion and
                                                       emits MODIFIED); other types -> 415
    GET   /api/v1/namespaces/{name}                    namespace
    GET   /api/v1/pods, /api/v1/namespaces/{ns}/pods   LIST (PodList) or, with watch=true, WATCH
    GET   /api/v1/namespaces                           LIST (NamespaceList) or WATCH
  LIST/WATCH query: fieldSelector (spec.nodeName, metadata.name, metadata.namespace; = == !=),
  labelSelector (k=v, k==v, k!=v, k, !k; comma = and), limit + continue (a continue token is
  refused with 410 once anything changed), resourceVersion, allowWatchBookmarks, timeoutSeconds.
  WATCH from resourceVersion "" or "0" starts with ADDED for every current object; from an older
  resourceVersion than the last compaction it sends an ERROR event with a 410 Status (as the real
  server does). With a selector, an object that stops matching is sent as DELETED, one that starts
  matching as ADDED. BOOKMARK events every --bookmark-interval seconds. The stream ends cleanly
  after timeoutSeconds.

Control API (no auth; JSON bodies; every answer is JSON):
    POST   /_control/pods               body: a Pod, or {"items": [Pod, ...]}: create or replace
                                        (ADDED / MODIFIED); uid, resourceVersion, creationTimestamp,
                                        namespace ("default") are filled in. Answer: stored objects.
    DELETE /_control/pods/{ns}/{name}   delete (DELETED event); 404 when absent
    POST   /_control/namespaces         body: a Namespace or {"items": [...]}: create or replace
    DELETE /_control/namespaces/{name}  delete
    POST   /_control/compact            positions older than the current resourceVersion expire:
                                        a WATCH from them gets the 410 ERROR event
    POST   /_control/expire_watches     body {"count": n}: the next n WATCH requests get the 410
    POST   /_control/rewind_watches     body {"count": n, "by": k}: the next n WATCH requests start k
                                        changes before the resourceVersion asked for, re-sending
                                        events the client has seen (duplicates a client must drop)
    POST   /_control/stall_watches      body {"count": n}: the next n WATCH requests get their headers
                                        and then silence (no events, no bookmarks, no end at
                                        timeoutSeconds) until drop_watches: a dead peer TCP misses
    POST   /_control/drop_watches       every open watch connection is cut without the final
                                        chunk (as a dying apiserver or load balancer does)
    POST   /_control/pause_watches      cut open watches, answer new WATCH requests with 503
    POST   /_control/resume_watches
    POST   /_control/fail               body {"status": 503, "count": n, "verb": "GET"|"PATCH"|"",
                                        "path_prefix": "/api/v1/..."}: the next n matching API
                                        requests fail with that HTTP status (a Status body);
                                        {"delay_ms": n, ...} instead delays them
    POST   /_control/config             body {"bookmark_interval": seconds}
    GET    /_control/log?since=RV       {"resourceVersion": "<current>", "events": [{"rv", "type",
                                        "kind", "key", "object"}]}: every change the server made,
                                        in order: the oracle for watch/informer tests
    GET    /_control/state              {"resourceVersion", "pods": {key: Pod}, "namespaces": {...}}
    GET    /_control/stats              request counts by "<VERB> <resource>" (e.g. "PATCH pod",
                                        "GET namespace", "LIST pods", "WATCH pods") and
                                        "watches_active"
"""
import argparse
import base64
import copy
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def status_obj(code, reason, message, details=None):
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details:
        s["details"] = details
    return s


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def parse_label_selector(sel):
    reqs = []
    for part in [p.strip() for p in sel.split(",") if p.strip()]:
        if "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(("ne", k.strip(), v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(("eq", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(("eq", k.strip(), v.strip()))
        elif part.startswith("!"):
            reqs.append(("absent", part[1:].strip(), None))
        else:
            reqs.append(("exists", part, None))
    return reqs


def labels_match(reqs, obj):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, k, v in reqs:
        if op == "eq" and labels.get(k) != v:
            return False
        if op == "ne" and labels.get(k) == v:
            return False
        if op == "exists" and k not in labels:
            return False
        if op == "absent" and k in labels:
            return False
    return True


FIELDS = {
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
    "metadata.name": lambda o: o["metadata"].get("name", ""),
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
}


def parse_field_selector(sel):
    reqs = []
    for part in [p.strip() for p in sel.split(",") if p.strip()]:
        neg = "!=" in part
        k, v = part.split("!=" if neg else ("==" if "==" in part else "="), 1)
        k = k.strip()
        if k not in FIELDS:
            raise ValueError('field label not supported: %s' % k)
        reqs.append((neg, k, v.strip()))
    return reqs


def fields_match(reqs, obj):
    for neg, k, v in reqs:
        if (FIELDS[k](obj) == v) == neg:
            return False
    return True


class Store:
    def __init__(self):
        self.cv = threading.Condition()
        self.rv = 1000
        self.objs = {"Pod": {}, "Namespace": {}}  # kind -> key -> object
        self.log = []  # {"rv", "type", "kind", "key", "object", "old"}
        self.compacted = 0
        self.expire_next = 0
        self.rewind = (0, 0)  # (count, by)
        self.stall_next = 0
        self.generation = 0  # bumped by drop_watches: open watches end abruptly
        self.paused = False
        self.faults = []
        self.bookmark_interval = 1.0
        self.stats = {}
        self.watches_active = 0

    def count(self, what):
        with self.cv:
            self.stats[what] = self.stats.get(what, 0) + 1

    @staticmethod
    def key(kind, obj):
        md = obj["metadata"]
        return "%s/%s" % (md["namespace"], md["name"]) if kind == "Pod" else md["name"]

    def upsert(self, kind, obj):
        obj = copy.deepcopy(obj)
        obj["kind"] = kind
        obj["apiVersion"] = "v1"
        md = obj.setdefault("metadata", {})
        if not md.get("name"):
            raise ValueError("metadata.name is required")
        if kind == "Pod":
            md.setdefault("namespace", "default")
            obj.setdefault("spec", {}).setdefault("containers", [])
            obj.setdefault("status", {})
        else:
            md.pop("namespace", None)
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})
            md.setdefault("labels", {}).setdefault("kubernetes.io/metadata.name", md["name"])
        with self.cv:
            key = self.key(kind, obj)
            old = self.objs[kind].get(key)
            md.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            md.setdefault("creationTimestamp",
                          old["metadata"]["creationTimestamp"] if old else now_rfc3339())
            return self._commit(kind, "MODIFIED" if old else "ADDED", key, obj, old)

    def _commit(self, kind, typ, key, obj, old):
        self.rv += 1
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.objs[kind][key] = obj
        else:
            obj = copy.deepcopy(old)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            del self.objs[kind][key]
        self.log.append({"rv": self.rv, "type": typ, "kind": kind, "key": key,
                         "object": copy.deepcopy(obj), "old": copy.deepcopy(old)})
        self.cv.notify_all()
        return copy.deepcopy(obj)

    def delete(self, kind, key):
        with self.cv:
            old = self.objs[kind].get(key)
            if old is None:
                return None
            return self._commit(kind, "DELETED", key, None, old)

    def patch(self, kind, key, patch):
        with self.cv:
            old = self.objs[kind].get(key)
            if old is None:
                return None
            new = merge_patch(old, patch)
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:  # a no-op patch changes nothing, as on a real server
                return copy.deepcopy(old)
            return self._commit(kind, "MODIFIED", key, new, old)

    def take_fault(self, verb, path):
        with self.cv:
            for f in self.faults:
                if f["count"] <= 0:
                    continue
                if f.get("verb") and f["verb"] != verb:
                    continue
                if not path.startswith(f.get("path_prefix", "")):
                    continue
                f["count"] -= 1
                return dict(f)
            self.faults = [f for f in self.faults if f["count"] > 0]
        return None


STORE = Store()
ARGS = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver/1.0"
    # Headers and body go out in separate writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK (40 ms a request), which would swamp any latency measurement.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet unless asked
        if os.environ.get("FAKE_APISERVER_VERBOSE"):
            sys.stderr.write("fake-apiserver: " + (fmt % args) + "\n")

    # ---- plumbing ----
    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_status(self, code, reason, message, details=None):
        self.send_json(code, status_obj(code, reason, message, details))

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def authorized(self):
        if ARGS.client_ca:
            try:
                if self.connection.getpeercert():
                    return True
            except (ValueError, AttributeError):
                pass
        try:
            with open(ARGS.token_file) as f:
                token = f.read().strip()
        except OSError:
            return False
        return bool(token) and self.headers.get("Authorization") == "Bearer " + token

    def do_GET(self):
        self.dispatch("GET")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PUT(self):
        self.dispatch("PUT")

    def dispatch(self, verb):
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if parts[:1] == ["_control"]:
                return self.control(verb, parts[1:], query)
            body = self.read_body()
            if not self.authorized():
                return self.send_status(401, "Unauthorized", "Unauthorized")
            fault = STORE.take_fault(verb, url.path)
            if fault:
                if fault.get("delay_ms"):
                    time.sleep(fault["delay_ms"] / 1000.0)
                else:
                    code = int(fault.get("status", 503))
                    return self.send_status(code, "InternalError" if code >= 500 else "BadRequest",
                                            "injected fault %d" % code)
            return self.api(verb, parts, query, body)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True

    # ---- Kubernetes API ----
    def api(self, verb, parts, query, body):
        if parts[:2] != ["api", "v1"]:
            return self.send_status(404, "NotFound", "the server could not find the requested resource")
        p = parts[2:]
        watch = query.get("watch") in ("true", "1")
        if p == ["pods"] and verb == "GET":
            return self.collection("Pod", None, query, watch)
        if p == ["namespaces"] and verb == "GET":
            return self.collection("Namespace", None, query, watch)
        if len(p) == 3 and p[0] == "namespaces" and p[2] == "pods" and verb == "GET":
            return self.collection("Pod", p[1], query, watch)
        if len(p) == 2 and p[0] == "namespaces" and verb == "GET":
            STORE.count("GET namespace")
            with STORE.cv:
                obj = copy.deepcopy(STORE.objs["Namespace"].get(p[1]))
            if obj is None:
                return self.send_status(404, "NotFound", 'namespaces "%s" not found' % p[1],
                                        {"name": p[1], "kind": "namespaces"})
            return self.send_json(200, obj)
        if len(p) == 4 and p[0] == "namespaces" and p[2] == "pods":
            key = "%s/%s" % (p[1], p[3])
            if verb == "GET":
                STORE.count("GET pod")
                with STORE.cv:
                    obj = copy.deepcopy(STORE.objs["Pod"].get(key))
            elif verb == "PATCH":
                STORE.count("PATCH pod")
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if ctype != "application/merge-patch+json":
                    return self.send_status(415, "UnsupportedMediaType",
                                            "the body of the request was in an unknown format - "
                                            "accepted media types include: application/merge-patch+json")
                try:
                    patch = json.loads(body or b"null")
                except ValueError as e:
                    return self.send_status(400, "BadRequest", "invalid JSON: %s" % e)
                if not isinstance(patch, dict):
                    return self.send_status(400, "BadRequest", "a merge patch must be a JSON object")
                obj = STORE.patch("Pod", key, patch)
            else:
                return self.send_status(405, "MethodNotAllowed", "method %s not allowed" % verb)
            if obj is None:
                return self.send_status(404, "NotFound", 'pods "%s" not found' % p[3],
                                        {"name": p[3], "kind": "pods"})
            return self.send_json(200, obj)
        return self.send_status(404, "NotFound", "the server could not find the requested resource")

    def selectors(self, query):
        try:
            return parse_field_selector(query.get("fieldSelector", "")), \
                parse_label_selector(query.get("labelSelector", ""))
        except ValueError as e:
            self.send_status(400, "BadRequest", str(e))
            return None

    def collection(self, kind, ns, query, watch):
        sel = self.selectors(query)
        if sel is None:
            return
        fields, labels = sel

        def match(obj):
            if obj is None:
                return False
            if ns is not None and obj["metadata"].get("namespace") != ns:
                return False
            return fields_match(fields, obj) and labels_match(labels, obj)

        resource = "pods" if kind == "Pod" else "namespaces"
        if watch:
            STORE.count("WATCH " + resource)
            return self.watch(kind, match, query)
        STORE.count("LIST " + resource)
        limit = int(query.get("limit") or 0)
        start_after, snap_rv = None, None
        if query.get("continue"):
            try:
                tok = json.loads(base64.b64decode(query["continue"]))
                start_after, snap_rv = tok["start"], tok["rv"]
            except (ValueError, KeyError, TypeError):
                return self.send_status(400, "BadRequest", "invalid continue token")
        with STORE.cv:
            if snap_rv is not None and snap_rv != STORE.rv:
                return self.send_status(410, "Expired", "The provided continue parameter is too old "
                                        "to display a consistent list result.")
            rv = STORE.rv
            keys = sorted(k for k, o in STORE.objs[kind].items() if match(o))
            if start_after is not None:
                keys = [k for k in keys if k > start_after]
            cont = ""
            if limit and len(keys) > limit:
                keys = keys[:limit]
                cont = base64.b64encode(json.dumps({"start": keys[-1], "rv": rv}).encode()).decode()
            items = []
            for k in keys:
                o = copy.deepcopy(STORE.objs[kind][k])
                o.pop("kind", None)
                o.pop("apiVersion", None)
                items.append(o)
        md = {"resourceVersion": str(rv)}
        if cont:
            md["continue"] = cont
        self.send_json(200, {"kind": kind + "List", "apiVersion": "v1", "metadata": md, "items": items})

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def write_event(self, typ, obj):
        self.write_chunk(json.dumps({"type": typ, "object": obj}).encode() + b"\n")

    def cut(self):
        """Ends the connection without the last chunk: the client sees a truncated stream."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def watch(self, kind, match, query):
        if STORE.paused:
            return self.send_status(503, "ServiceUnavailable", "watches are paused (test control)")
        rv_q = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with STORE.cv:
            STORE.watches_active += 1
            gen = STORE.generation
            if STORE.stall_next > 0:
                STORE.stall_next -= 1
                try:
                    while STORE.generation == gen:
                        STORE.cv.wait(1.0)
                finally:
                    STORE.watches_active -= 1
                self.cut()
                return
            expired = False
            if rv_q not in ("", "0"):
                try:
                    cursor = int(rv_q)
                except ValueError:
                    cursor = -1
                if cursor < STORE.compacted or cursor < 0 or STORE.expire_next > 0:
                    expired = True
                    if STORE.expire_next > 0:
                        STORE.expire_next -= 1
                initial = []
                if not expired and STORE.rewind[0] > 0:
                    count, by = STORE.rewind
                    STORE.rewind = (count - 1, by)
                    earlier = [e["rv"] for e in STORE.log if e["rv"] <= cursor]
                    if earlier:
                        cursor = earlier[-min(by, len(earlier))] - 1
            else:
                cursor = STORE.rv
                initial = [copy.deepcopy(o) for _, o in sorted(STORE.objs[kind].items()) if match(o)]
        try:
            if expired:
                self.write_event("ERROR", status_obj(
                    410, "Expired", "too old resource version: %s (%d)" % (rv_q, STORE.compacted)))
                self.write_chunk(b"")
                return
            for o in initial:
                self.write_event("ADDED", o)
            deadline = time.monotonic() + timeout
            last_bookmark = time.monotonic()
            while True:
                with STORE.cv:
                    while True:
                        now = time.monotonic()
                        if STORE.generation != gen:
                            break
                        if STORE.log and STORE.log[-1]["rv"] > cursor:
                            break
                        wake = deadline
                        if bookmarks:
                            wake = min(wake, last_bookmark + STORE.bookmark_interval)
                        if now >= wake:
                            break
                        STORE.cv.wait(wake - now)
                    if STORE.generation != gen:
                        self.cut()
                        return
                    entries = [e for e in STORE.log if e["rv"] > cursor and e["kind"] == kind]
                    top = STORE.rv
                for e in entries:
                    was, now_in = match(e["old"]), match(e["object"])
                    if e["type"] == "DELETED":
                        typ = "DELETED" if was else None
                    elif was and now_in:
                        typ = "MODIFIED"
                    elif now_in:
                        typ = "ADDED"
                    elif was:
                        typ = "DELETED"
                    else:
                        typ = None
                    if typ:
                        self.write_event(typ, e["object"])
                cursor = top
                now = time.monotonic()
                if bookmarks and now >= last_bookmark + STORE.bookmark_interval:
                    self.write_event("BOOKMARK", {
                        "kind": kind, "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(cursor), "creationTimestamp": None},
                        "spec": {"containers": None} if kind == "Pod" else {}, "status": {}})
                    last_bookmark = now
                if now >= deadline:
                    self.write_chunk(b"")
                    return
        finally:
            with STORE.cv:
                STORE.watches_active -= 1

    # ---- control ----
    def control(self, verb, parts, query):
        body = self.read_body()
        try:
            data = json.loads(body) if body else {}
        except ValueError as e:
            return self.send_json(400, {"error": "invalid JSON: %s" % e})
        if verb == "POST" and parts in (["pods"], ["namespaces"]):
            kind = "Pod" if parts[0] == "pods" else "Namespace"
            items = data.get("items") if "items" in data else [data]
            try:
                return self.send_json(200, {"items": [STORE.upsert(kind, o) for o in items]})
            except (ValueError, KeyError, TypeError) as e:
                return self.send_json(400, {"error": str(e)})
        if verb == "DELETE" and parts[:1] in (["pods"], ["namespaces"]):
            kind = "Pod" if parts[0] == "pods" else "Namespace"
            key = "/".join(parts[1:])
            obj = STORE.delete(kind, key)
            if obj is None:
                return self.send_json(404, {"error": "%s %s not found" % (kind, key)})
            return self.send_json(200, obj)
        if verb == "POST" and parts == ["compact"]:
            with STORE.cv:
                STORE.compacted = STORE.rv
            return self.send_json(200, {"compacted": STORE.compacted})
        if verb == "POST" and parts == ["expire_watches"]:
            with STORE.cv:
                STORE.expire_next = int(data.get("count", 1))
            return self.send_json(200, {})
        if verb == "POST" and parts == ["stall_watches"]:
            with STORE.cv:
                STORE.stall_next = int(data.get("count", 1))
            return self.send_json(200, {})
        if verb == "POST" and parts == ["rewind_watches"]:
            with STORE.cv:
                STORE.rewind = (int(data.get("count", 1)), int(data.get("by", 1)))
            return self.send_json(200, {})
        if verb == "POST" and parts in (["drop_watches"], ["pause_watches"], ["resume_watches"]):
            with STORE.cv:
                if parts[0] != "resume_watches":
                    STORE.generation += 1
                STORE.paused = parts[0] == "pause_watches"
                STORE.cv.notify_all()
            return self.send_json(200, {})
        if verb == "POST" and parts == ["fail"]:
            with STORE.cv:
                STORE.faults.append({"status": int(data.get("status", 503)),
                                     "count": int(data.get("count", 1)),
                                     "verb": data.get("verb", ""),
                                     "path_prefix": data.get("path_prefix", ""),
                                     "delay_ms": int(data.get("delay_ms", 0))})
            return self.send_json(200, {})
        if verb == "POST" and parts == ["config"]:
            with STORE.cv:
                if "bookmark_interval" in data:
                    STORE.bookmark_interval = float(data["bookmark_interval"])
                STORE.cv.notify_all()
            return self.send_json(200, {})
        if verb == "GET" and parts == ["log"]:
            since = int(query.get("since") or 0)
            with STORE.cv:
                events = [{k: e[k] for k in ("rv", "type", "kind", "key", "object")}
                          for e in STORE.log if e["rv"] > since]
                return self.send_json(200, {"resourceVersion": str(STORE.rv), "events": events})
        if verb == "GET" and parts == ["state"]:
            with STORE.cv:
                return self.send_json(200, {"resourceVersion": str(STORE.rv),
                                            "pods": STORE.objs["Pod"],
                                            "namespaces": STORE.objs["Namespace"]})
        if verb == "GET" and parts == ["stats"]:
            with STORE.cv:
                return self.send_json(200, dict(STORE.stats, watches_active=STORE.watches_active))
        return self.send_json(404, {"error": "unknown control request %s /%s" % (verb, "/".join(parts))})


def load_fixtures(d):
    for name in sorted(os.listdir(d)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(d, name)) as f:
            doc = json.load(f)
        items = doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc]
        for o in items:
            kind = o.get("kind") or ("Pod" if doc.get("kind") == "PodList" else "Namespace")
            if kind in ("Pod", "Namespace"):
                STORE.upsert(kind, o)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--client-ca")
    ap.add_argument("--fixtures")
    ap.add_argument("--bookmark-interval", type=float, default=1.0)
    ARGS = ap.parse_args()
    STORE.bookmark_interval = ARGS.bookmark_interval
    if ARGS.fixtures:
        load_fixtures(ARGS.fixtures)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    if ARGS.client_ca:
        ctx.load_verify_locations(ARGS.client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in ARGS.host else socket.AF_INET

        def get_request(self):
            sock, addr = self.socket.accept()
            # The handshake runs in the request thread (a stalled client does not block accept).
            return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

        def handle_error(self, request, client_address):
            pass  # a client that hangs up or fails TLS verification is not a server error

    srv = Server((ARGS.host, ARGS.port), Handler)
    port = srv.server_address[1]
    if ARGS.port_file:
        tmp = ARGS.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.rename(tmp, ARGS.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
