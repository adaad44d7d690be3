// Validates rendered Kubernetes manifests (kubectl kustomize output, one YAML stream per overlay):
//   node validate.mjs --modules DIR --src SRC [--daemon-help FILE] OVERLAY=FILE...
// 1. every object against the Kubernetes OpenAPI schema of its kind (kubernetes-models'
//    validators, generated from the upstream OpenAPI spec: types, required fields, enums,
//    formats) and, since those validators accept unknown fields, against the property names
//    the same models declare (a misspelt field is rejected, as `kubectl apply` does);
// 2. what a schema cannot say: the ClusterRole grants exactly the calls common/kube/api.hpp
//    declares; every image is what install/image.sh builds; every volumeMount names a volume and
//    every volume is mounted; the DaemonSet's node-level settings; the istio-ca token;
// 3. with --daemon-help (kmesh-daemon --help of the build): every kmesh-daemon flag in the
//    manifests exists, and the token, root-cert and admin paths match the daemon's defaults.
// Before all that it checks itself: broken copies of a rendered DaemonSet must be rejected.
import { readFileSync, readdirSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";

const argv = process.argv.slice(2);
const opt = { overlays: [] };
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--modules") opt.modules = argv[++i];
  else if (argv[i] === "--src") opt.src = argv[++i];
  else if (argv[i] === "--daemon-help") opt.daemonHelp = argv[++i];
  else {
    const eq = argv[i].indexOf("=");
    opt.overlays.push({ name: argv[i].slice(0, eq), file: argv[i].slice(eq + 1) });
  }
}
const req = createRequire(path.join(path.resolve(opt.modules), "package.json"));
const YAML = req("yaml");
const modelsDir = path.dirname(req.resolve("kubernetes-models/package.json"));

const errors = [];
const fail = (where, msg) => errors.push(`${where}: ${msg}`);

// ---- 1. schema ---------------------------------------------------------------------------------

// apiVersion + kind -> kubernetes-models module ("v1/Pod", "apps/v1/DaemonSet", ...).
function modelPath(obj) {
  if (typeof obj.apiVersion !== "string" || typeof obj.kind !== "string") return null;
  const p = path.join(modelsDir, obj.apiVersion, obj.kind + ".js");
  return existsSync(p) ? p : null;
}

// Declared properties per interface, from the models' .d.ts files (generated from the same
// OpenAPI spec): interface name -> {prop -> type text}, and the file's imports.
const dtsCache = new Map();
function dtsFile(file) {
  if (dtsCache.has(file)) return dtsCache.get(file);
  const text = readFileSync(file, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/import \{ (\w+) \} from "([^"]+)";/g)) {
    // Packages' "exports" maps hide .d.ts files from require.resolve: npm ci's flat node_modules.
    const target = m[2].startsWith(".") ? path.join(path.dirname(file), m[2]) : path.join(opt.modules, "node_modules", m[2]);
    imports.set(m[1], target + ".d.ts");
  }
  const interfaces = new Map();
  for (const m of text.matchAll(/export interface (\w+)(?: extends [^{]+)? \{([\s\S]*?)\n\}/g)) {
    const props = new Map();
    const body = m[2].replace(/\/\*\*[\s\S]*?\*\//g, "").replace(/\{\s*\[key: string\]: ([^;]+);\s*\}/g, "{ [key: string]: $1; }");
    for (const p of body.matchAll(/^\s*"([^"]+)"\??: (.+);$/gm)) props.set(p[1], p[2].trim());
    interfaces.set(m[1], props);
  }
  const entry = { file, imports, interfaces };
  dtsCache.set(file, entry);
  return entry;
}

// The interface a type text names, resolved to {file, name}; null for scalars and free maps.
function resolveType(ctx, name) {
  if (ctx.interfaces.has(name)) return { dts: ctx, name };
  const file = ctx.imports.get(name);
  if (!file || !existsSync(file)) return null;
  const d = dtsFile(file);
  // Imported aliases (IIoK8sApiCoreV1X) name the file's own interface (IX).
  const own = [...d.interfaces.keys()][0];
  return own ? { dts: d, name: own } : null;
}

function checkFields(where, value, dts, iface) {
  const props = dts.interfaces.get(iface);
  if (!props || value === null || typeof value !== "object" || Array.isArray(value)) return;
  for (const [k, v] of Object.entries(value)) {
    if (!props.has(k)) {
      fail(where, `unknown field "${k}" (${iface.replace(/^I/, "")} has: ${[...props.keys()].join(", ")})`);
      continue;
    }
    checkType(`${where}.${k}`, v, dts, props.get(k));
  }
}

function checkType(where, v, dts, type) {
  let m;
  if ((m = /^Array<(\w+)>$/.exec(type))) {
    if (Array.isArray(v)) v.forEach((e, i) => checkType(`${where}[${i}]`, e, dts, m[1]));
    return;
  }
  if ((m = /^\{\s*\[key: string\]: (\w+);?\s*\}$/.exec(type))) {
    if (v && typeof v === "object") for (const [k, e] of Object.entries(v)) checkType(`${where}.${k}`, e, dts, m[1]);
    return;
  }
  if (!/^I\w+$/.test(type)) return;  // scalars, unions, quantities, IntOrString
  const t = resolveType(dts, type);
  if (t) checkFields(where, v, t.dts, t.name);
}

function validateObject(where, obj) {
  const mp = modelPath(obj);
  if (!mp) {
    fail(where, `no Kubernetes schema for apiVersion ${obj.apiVersion} kind ${obj.kind}`);
    return;
  }
  const Model = req(mp)[obj.kind];
  try {
    new Model(obj).validate();
  } catch (e) {
    fail(where, `schema: ${e.message}`);
  }
  checkFields(where, obj, dtsFile(mp.slice(0, -3) + ".d.ts"), "I" + obj.kind);
}

// ---- 2. what the schema cannot say -------------------------------------------------------------

const srcFile = (p) => readFileSync(path.join(opt.src, p), "utf8");
const version = /^project\(kmesh-cpp VERSION ([0-9][0-9.]*)/m.exec(srcFile("CMakeLists.txt"))?.[1];
// install/image.sh's default name (IMAGE=${IMAGE:-name}) and the version it tags.
const imageName = /^IMAGE=\$\{IMAGE:-([^}]+)\}/m.exec(srcFile("install/image.sh"))?.[1];
const wantImage = `${imageName}:${version}`;

// The calls common/kube/api.hpp declares, as RBAC (resource, verb) pairs: get_pod -> pods get,
// watch_namespaces -> namespaces watch, patch_pod_annotations -> pods patch.
function usedRbac() {
  const api = srcFile("common/kube/api.hpp");
  const set = new Set();
  for (const m of api.matchAll(/virtual\s+[\w:<>, ]+?\s+(get|list|watch|patch|create|update|delete)_(pod|namespace)s?\w*\s*\(/g)) {
    set.add(`${m[2]}s ${m[1]}`);
  }
  return set;
}

function podSpecs(obj) {
  const s = obj?.spec?.template?.spec;
  return s ? [s] : [];
}
const containersOf = (spec) => [...(spec.initContainers ?? []), ...(spec.containers ?? [])];

function checkSemantics(name, objs) {
  const byKind = (k) => objs.filter((o) => o.kind === k);
  const where = (o) => `${name}: ${o.kind}/${o.metadata?.name}`;

  // RBAC: exactly the used set, per caller, core group only. The agent LISTs and WATCHes, kmesh-cni
  // GETs (at ADD), both PATCH the annotation: ClusterRole "kmesh" for the agent's ServiceAccount,
  // "kmesh-cni" for the plugin's.
  const used = usedRbac();
  if (used.size === 0) fail(name, "found no API calls in common/kube/api.hpp (did its shape change?)");
  const wantBy = {
    kmesh: new Set([...used].filter((x) => /(list|watch|patch)$/.test(x))),
    "kmesh-cni": new Set([...used].filter((x) => /(get|patch)$/.test(x))),
  };
  const roles = byKind("ClusterRole").concat(byKind("Role"));
  if (roles.length !== 2 || !roles.every((r) => wantBy[r.metadata?.name]))
    fail(name, `want the ClusterRoles kmesh and kmesh-cni, found ${roles.map((r) => r.metadata?.name).join(", ")}`);
  for (const r of roles) {
    const want = wantBy[r.metadata?.name] ?? new Set();
    const got = new Set();
    for (const rule of r.rules ?? []) {
      if (JSON.stringify(rule.apiGroups) !== '[""]') fail(where(r), `rule for apiGroups ${JSON.stringify(rule.apiGroups)}: only the core group is used`);
      if (rule.resourceNames || rule.nonResourceURLs) fail(where(r), "unexpected resourceNames/nonResourceURLs");
      for (const res of rule.resources ?? []) for (const verb of rule.verbs ?? []) got.add(`${res} ${verb}`);
    }
    const extra = [...got].filter((x) => !want.has(x)), missing = [...want].filter((x) => !got.has(x));
    if (extra.length) fail(where(r), `grants what no call in api.hpp uses: ${extra.join(", ")}`);
    if (missing.length) fail(where(r), `lacks what api.hpp calls: ${missing.join(", ")}`);
  }
  const sas = byKind("ServiceAccount");
  const sa = sas.find((x) => x.metadata?.name === "kmesh");
  const cniSa = sas.find((x) => x.metadata?.name === "kmesh-cni");
  if (!sa || !cniSa || sas.length !== 2) fail(name, "want the ServiceAccounts kmesh and kmesh-cni");
  const bindings = byKind("ClusterRoleBinding");
  if (bindings.length !== 2) fail(name, `want 2 ClusterRoleBindings, found ${bindings.length}`);
  for (const b of bindings) {
    const s = b.subjects ?? [];
    const acct = sas.find((x) => x.metadata?.name === b.roleRef?.name);
    if (!acct || s.length !== 1 || s[0].kind !== "ServiceAccount" ||
        s[0].name !== acct.metadata.name || s[0].namespace !== acct.metadata.namespace)
      fail(where(b), "must bind each ClusterRole to the ServiceAccount of the same name, and nothing else");
  }
  // kmesh-cni's token: a Secret of the token controller bound to no pod (a projected token would
  // die with the agent's pod), mounted where --cni-service-account-dir points.
  const tokenSecret = byKind("Secret").find((x) => x.type === "kubernetes.io/service-account-token" &&
    x.metadata?.annotations?.["kubernetes.io/service-account.name"] === cniSa?.metadata?.name);
  if (!tokenSecret) fail(name, "no kubernetes.io/service-account-token Secret for the kmesh-cni ServiceAccount");

  const ds = byKind("DaemonSet");
  if (ds.length !== 1) fail(name, `want exactly one DaemonSet, found ${ds.length}`);
  for (const d of ds) {
    const spec = d.spec.template.spec;
    if (spec.serviceAccountName !== sa?.metadata?.name) fail(where(d), "does not run as the ServiceAccount the binding names");
    if (d.metadata.namespace !== sa?.metadata?.namespace) fail(where(d), "not in the ServiceAccount's namespace");
    if (spec.hostNetwork !== true) fail(where(d), "hostNetwork must be true (probes on 127.0.0.1, never enrolled)");
    if (spec.priorityClassName !== "system-node-critical") fail(where(d), "priorityClassName must be system-node-critical");
    if (!(spec.tolerations ?? []).some((t) => t.operator === "Exists" && !t.key && !t.effect))
      fail(where(d), "must tolerate every taint (operator: Exists, no key, no effect)");
    const us = d.spec.updateStrategy;
    if (us?.type !== "RollingUpdate" || us?.rollingUpdate?.maxUnavailable !== 1) fail(where(d), "updateStrategy must be RollingUpdate, maxUnavailable 1");
    const selector = d.spec.selector?.matchLabels ?? {};
    for (const [k, v] of Object.entries(selector))
      if (d.spec.template.metadata?.labels?.[k] !== v) fail(where(d), `selector ${k}=${v} does not match the template's labels`);

    const volumes = new Map((spec.volumes ?? []).map((v) => [v.name, v]));
    const mounted = new Set();
    for (const c of containersOf(spec)) {
      const cw = `${where(d)} container ${c.name}`;
      if (c.image !== wantImage) fail(cw, `image ${c.image}, want ${wantImage} (what install/image.sh builds)`);
      for (const m of c.volumeMounts ?? []) {
        mounted.add(m.name);
        if (!volumes.has(m.name)) fail(cw, `volumeMount ${m.mountPath} names no volume "${m.name}"`);
        if (m.mountPropagation === "Bidirectional" && c.securityContext?.privileged !== true)
          fail(cw, `Bidirectional mount ${m.mountPath} needs a privileged container`);
      }
      const paths = (c.volumeMounts ?? []).map((m) => m.mountPath);
      const dup = paths.filter((p, i) => paths.indexOf(p) !== i);
      if (dup.length) fail(cw, `mountPath used twice: ${dup.join(", ")}`);
    }
    for (const v of volumes.keys()) if (!mounted.has(v)) fail(where(d), `volume "${v}" is mounted by no container`);

    // The agent's container: what every mode needs.
    const agent = (spec.containers ?? []).find((c) => c.name === "kmesh-daemon");
    if (!agent) { fail(where(d), "no kmesh-daemon container"); continue; }
    if ((agent.command ?? [])[0] !== "kmesh-daemon") continue;  // the uninstall overlay's placeholder
    const env = new Map((agent.env ?? []).map((e) => [e.name, e]));
    // The installer must write kmesh-cni's kubeconfig from kmesh-cni's own token Secret.
    const saDirArg = (agent.args ?? []).find((a) => a.startsWith("--cni-service-account-dir="));
    const saDir = saDirArg?.split("=")[1];
    const saMount = (agent.volumeMounts ?? []).find((m) => m.mountPath === saDir);
    if (!saDir || !saMount || volumes.get(saMount.name)?.secret?.secretName !== tokenSecret?.metadata?.name)
      fail(where(d), "--cni-service-account-dir must point at the mounted kmesh-cni token Secret");
    for (const [n, field] of [["NODE_NAME", "spec.nodeName"], ["POD_NAME", "metadata.name"],
                              ["POD_NAMESPACE", "metadata.namespace"], ["INSTANCE_IP", "status.podIP"]])
      if (env.get(n)?.valueFrom?.fieldRef?.fieldPath !== field) fail(where(d), `env ${n} must come from the downward API (${field})`);
    if (!env.get("CLUSTER_ID")?.value) fail(where(d), "env CLUSTER_ID missing");
    if (!(agent.args ?? []).includes("--install-cni")) fail(where(d), "the agent must run with --install-cni");
    const mountAt = (p) => (agent.volumeMounts ?? []).find((m) => m.mountPath === p);
    const hostPathAt = (p) => volumes.get(mountAt(p)?.name)?.hostPath?.path;
    for (const [p, host] of [["/sys/fs/bpf", "/sys/fs/bpf"], ["/sys/fs/cgroup", "/sys/fs/cgroup"],
                             ["/opt/cni/bin", "/opt/cni/bin"], ["/etc/cni/net.d", "/etc/cni/net.d"], ["/var/log", "/var/log"]])
      if (hostPathAt(p) !== host) fail(where(d), `${p} must be the node's ${host} (hostPath)`);
    if (mountAt("/sys/fs/bpf")?.mountPropagation !== "Bidirectional") fail(where(d), "/sys/fs/bpf needs Bidirectional propagation");
    for (const probe of ["readinessProbe", "livenessProbe"])
      if (!agent[probe]?.httpGet) fail(where(d), `${probe} (httpGet on the admin port) missing`);
    if (agent.readinessProbe?.httpGet?.path !== "/ready") fail(where(d), "readinessProbe must ask /ready");
    if (!agent.resources?.requests?.cpu || !agent.resources?.requests?.memory || !agent.resources?.limits?.memory)
      fail(where(d), "resources: cpu and memory requests and a memory limit are required");

    if (name === "istiod") {
      if (env.get("XDS_ADDRESS")?.value !== "istiod.istio-system.svc:15012") fail(where(d), "XDS_ADDRESS must be istiod.istio-system.svc:15012");
      const tokenMount = mountAt("/var/run/secrets/tokens");
      const tok = volumes.get(tokenMount?.name)?.projected?.sources?.find((s) => s.serviceAccountToken)?.serviceAccountToken;
      if (tok?.audience !== "istio-ca" || tok?.path !== "istio-token")
        fail(where(d), "needs a projected token with audience istio-ca at /var/run/secrets/tokens/istio-token");
      const ca = volumes.get(mountAt("/var/run/secrets/istio")?.name)?.configMap;
      if (ca?.name !== "istio-ca-root-cert" || !(ca.items ?? []).some((i) => i.key === "root-cert.pem" && i.path === "root-cert.pem"))
        fail(where(d), "needs ConfigMap istio-ca-root-cert (root-cert.pem) at /var/run/secrets/istio");
    }
    if (name === "standalone") {
      const cfg = (agent.args ?? []).find((a) => a.startsWith("--config="))?.slice(9);
      if (!cfg) { fail(where(d), "standalone needs --config=FILE"); continue; }
      if (env.has("XDS_ADDRESS")) fail(where(d), "standalone must not set XDS_ADDRESS (--config excludes it)");
      const m = (agent.volumeMounts ?? []).find((m) => cfg.startsWith(m.mountPath + "/"));
      const cmName = volumes.get(m?.name)?.configMap?.name;
      const cm = byKind("ConfigMap").find((c) => c.metadata.name === cmName);
      const key = cfg.slice((m?.mountPath ?? "").length + 1);
      if (m?.subPath) fail(where(d), "the mesh ConfigMap is mounted with subPath: updates would never reach the agent");
      if (!cm?.data?.[key]) fail(where(d), `--config=${cfg} is not a key of a ConfigMap mounted there`);
      else {
        const mesh = YAML.parse(cm.data[key]);
        if (!Array.isArray(mesh?.services) || !Array.isArray(mesh?.workloads)) fail(`${name}: ConfigMap/${cmName}`, `${key}: services and workloads lists expected`);
      }
    }
  }
}

// ---- 3. against the daemon's own --help ----------------------------------------------------------

function daemonFlags(help) {
  const flags = new Map();
  for (const m of help.matchAll(/^\s+(?:-\w,)?(--[\w-]+)(?: [A-Z]+(?:=(\S+))?)?/gm)) flags.set(m[1], m[2]);
  return flags;
}

// Subcommand names listed under "Subcommands:" (of kmesh-daemon and of `kmesh-daemon cni`).
function daemonSubcommands(help) {
  const subs = new Set();
  for (const section of help.split(/^Subcommands:$/m).slice(1))
    for (const m of section.matchAll(/^ {2}(\w[\w-]*)(?:\s|$)/gm)) subs.add(m[1]);
  return subs;
}

function checkDaemonFlags(name, objs, help) {
  const flags = daemonFlags(help);
  const subs = daemonSubcommands(help);
  const ds = objs.find((o) => o.kind === "DaemonSet");
  for (const c of containersOf(podSpecs(ds)[0] ?? {})) {
    const words = [...(c.command ?? []), ...(c.args ?? [])].join(" ");
    // every kmesh-daemon invocation, also inside a shell script
    for (const inv of words.split(/\n|;|&&/)) {
      if (!/(^|\s)kmesh-daemon(\s|$)/.test(inv)) continue;
      for (const f of inv.match(/--[\w-]+/g) ?? [])
        if (!flags.has(f)) fail(`${name}: container ${c.name}`, `kmesh-daemon has no flag ${f} (kmesh-daemon --help)`);
      const words = inv.slice(inv.search(/(^|\s)kmesh-daemon(\s|$)/)).trim().split(/\s+/).slice(1);
      for (const w of words.filter((w) => !w.startsWith("-")))
        if (!subs.has(w)) fail(`${name}: container ${c.name}`, `kmesh-daemon has no subcommand "${w}" (kmesh-daemon --help)`);
    }
    if (c.name !== "kmesh-daemon" || c.command?.[0] !== "kmesh-daemon") continue;
    const mounts = c.volumeMounts ?? [];
    const dirMounted = (file) => mounts.some((m) => file.startsWith(m.mountPath + "/"));
    if (name === "istiod") {
      for (const f of ["--token-file", "--root-cert"]) {
        const def = flags.get(f);
        if (!def || !dirMounted(def)) fail(`${name}: ${c.name}`, `the daemon reads ${f} ${def} by default: nothing is mounted there`);
      }
      if (flags.get("--token-file") !== "/var/run/secrets/tokens/istio-token") fail(name, `daemon's --token-file default is ${flags.get("--token-file")}`);
    }
    for (const probe of [c.readinessProbe, c.livenessProbe]) {
      const g = probe?.httpGet;
      if (g && String(g.port) !== flags.get("--admin-port")) fail(`${name}: ${c.name}`, `probe port ${g.port}, the admin server listens on ${flags.get("--admin-port")}`);
      if (g && g.host !== flags.get("--admin-address")) fail(`${name}: ${c.name}`, `probe host ${g.host}, the admin server binds ${flags.get("--admin-address")}`);
    }
  }
}

// ---- run ----------------------------------------------------------------------------------------

function load(file) {
  return YAML.parseAllDocuments(readFileSync(file, "utf8")).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0].message}`);
    return d.toJS();
  }).filter((o) => o);
}

function runAll(overlays, help) {
  for (const { name, objs } of overlays) {
    if (objs.length === 0) fail(name, "renders no objects");
    objs.forEach((o, i) => validateObject(`${name}: [${i}] ${o.kind}/${o.metadata?.name}`, o));
    checkSemantics(name, objs);
    if (help !== undefined) checkDaemonFlags(name, objs, help);
  }
}

const overlays = opt.overlays.map((o) => ({ name: o.name, objs: load(o.file) }));
const help = opt.daemonHelp ? readFileSync(opt.daemonHelp, "utf8") : undefined;

// Self-check: each broken copy must be rejected, or the checks above are not checking.
const base = overlays.find((o) => o.name === "istiod") ?? overlays[0];
// [what is broken, how, the error that must name it]
const breakages = [
  ["hostNetwork as a string (wrong type)", (o) => { o.spec.template.spec.hostNetwork = "yes"; }, /schema: .*hostNetwork.*boolean/],
  ["replicas in a DaemonSet spec (unknown field)", (o) => { o.spec.replicas = 1; }, /unknown field "replicas"/],
  ["misspelt field mountPropogation", (o) => { o.spec.template.spec.containers[0].volumeMounts[0].mountPropogation = "Bidirectional"; }, /unknown field "mountPropogation"/],
  ["mountPropagation not in the enum", (o) => { o.spec.template.spec.containers[0].volumeMounts[0].mountPropagation = "Shared"; }, /schema: .*mountPropagation/],
  ["container without a name (required)", (o) => { delete o.spec.template.spec.containers[0].name; }, /schema: .*name/],
  ["volumeMount naming no volume", (o) => { o.spec.template.spec.containers[0].volumeMounts[0].name = "nope"; }, /names no volume "nope"/],
  ["image tag other than the project version", (o) => { o.spec.template.spec.containers[0].image = "kmesh-cpp/kmesh:latest"; }, /image kmesh-cpp\/kmesh:latest/],
  ["ClusterRole granting delete on pods", null, /grants what no call in api.hpp uses: pods delete/],
  ["kmesh-cni's token dir pointing at the agent's own token", (o) => {
    const a = o.spec.template.spec.containers[0].args;
    a[a.findIndex((x) => x.startsWith("--cni-service-account-dir="))] = "--cni-service-account-dir=/var/run/secrets/kubernetes.io/serviceaccount";
  }, /--cni-service-account-dir must point at the mounted kmesh-cni token Secret/],
];
for (const [what, breakIt, want] of breakages) {
  const objs = structuredClone(base.objs);
  if (breakIt) breakIt(objs.find((o) => o.kind === "DaemonSet"));
  else objs.find((o) => o.kind === "ClusterRole").rules[0].verbs.push("delete");
  const before = errors.length;
  runAll([{ name: base.name, objs }], undefined);
  const found = errors.slice(before);
  errors.length = before;
  if (!found.some((e) => want.test(e))) fail("self-check", `not rejected as expected (${want}): ${what}; errors: ${found.join(" | ") || "none"}`);
  else console.log(`self-check: rejected ${what}: ${found.find((e) => want.test(e))}`);
}

runAll(overlays, help);
for (const o of overlays) console.log(`${o.name}: ${o.objs.length} objects: ${o.objs.map((x) => x.kind).join(", ")}`);
if (errors.length) {
  for (const e of errors) console.error("FAIL " + e);
  process.exit(1);
}
console.log("PASS");
