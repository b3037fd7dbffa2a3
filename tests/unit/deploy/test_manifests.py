"""deploy/: the Kubernetes manifests and the compose file, checked against the programs they run.

1. Every manifest in deploy/k8s is valid for Kubernetes 1.29 (kubernetes-validate's bundled
   schemas, strict: unknown fields fail), and kustomization.yaml lists every one of them but the
   Secret template.
2. Every environment variable a sensorbus container sets is one its program prints in `--help`
   (binaries from $SB_BUILD_DIR, default build), so renaming a setting fails here and not at
   deploy time; a kafka.* pass-through must be a property librdkafka knows.
3. Every ConfigMap or Secret key a container reads exists, and the Secret template has no key
   that nothing reads; every *_FILE setting names a file that is mounted; probes, healthchecks
   and scrape annotations use the port the daemon listens on, on all interfaces; no pod gets
   Service link variables (SB_GATEWAY_SERVICE_HOST would be an unknown setting).
4. compose.yaml: dependencies name services, secrets come from git-ignored files that
   make-secrets creates (the DSNs and URLs with the passwords they belong to), and no secret
   (a setting --help marks "(secret)", or a name like *_PASSWORD) is written inline, there or
   in the manifests.
5. The gateway connects as sb_gateway (pg-gateway-dsn), never with the owner's DSN: row-level
   security binds only that role.

Needs `pip install -r tests/requirements.txt`, openssl, and the programs built, e.g.
`ninja -C build sb-gateway sb-sensor-ingest sb-anomaly-detector sb-order-processor
sb-s3-archiver sbctl`.
"""

import ctypes
import ctypes.util
import functools
import os
import pathlib
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_VERSION = "1.29.0"
SECRET_TEMPLATE = "secret.example.yaml"
PROGRAMS = ("sb-gateway", "sb-sensor-ingest", "sb-anomaly-detector", "sb-order-processor",
            "sb-s3-archiver", "sbctl")
# The setting each daemon serves /healthz, /readyz and /metrics on.
HEALTH_LISTEN = {
    "sb-gateway": "SB_GATEWAY_LISTEN",
    "sb-sensor-ingest": "SB_SENSOR_INGEST_HEALTH_LISTEN",
    "sb-anomaly-detector": "SB_ANOMALY_DETECTOR_HEALTH_LISTEN",
    "sb-order-processor": "SB_ORDER_PROCESSOR_HEALTH_LISTEN",
    "sb-s3-archiver": "SB_S3_ARCHIVER_HEALTH_LISTEN",
}
# The image of the sensorbus programs; other images run only the setup's helper steps (psql).
IMAGE = "sensorbus"
HELPER_IMAGES = {"postgres:15"}
# Names of settings whose values are secrets: they may only arrive as files or secretKeyRef.
# Settings that --help marks "(secret)" count too (secret_settings).
SECRET_NAME = re.compile(r"(PASSWORD|PEPPER|SECRET|SECRET_KEY|CREDENTIAL|_DSN|REDIS_URL)$")


def build_dir():
    build = pathlib.Path(os.environ.get("SB_BUILD_DIR", "build"))
    return build if build.is_absolute() else ROOT / build


@functools.cache
def help_text(program):
    binary = build_dir() / program
    assert binary.is_file(), f"{binary} is not built (ninja -C {build_dir()} {program})"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    return subprocess.run([str(binary), "--help"], env=env, capture_output=True, text=True,
                          timeout=30, check=True).stdout


# SB_X_PG_DSN[_FILE] (the daemons), SB_X_KAFKA_<PROPERTY>, "SB_S3_SECRET_KEY (or _FILE)" (sbctl).
HELP_VAR = re.compile(r"\b(SB_[A-Z0-9_]*[A-Z0-9])(\[_FILE\]|_<PROPERTY>| \(or _FILE\))?")


@functools.cache
def accepted(program):
    """(exact names, pass-through prefixes) of the environment variables `program --help` lists.

    `SB_X_PG_DSN[_FILE]` gives SB_X_PG_DSN and SB_X_PG_DSN_FILE; `SB_X_KAFKA_<PROPERTY>` gives
    the prefix SB_X_KAFKA_.
    """
    out = help_text(program)
    names, prefixes = set(), set()
    for m in HELP_VAR.finditer(out):
        if m.group(2) == "_<PROPERTY>":
            prefixes.add(m.group(1) + "_")
            continue
        names.add(m.group(1))
        if m.group(2):
            names.add(m.group(1) + "_FILE")
    assert names, f"{program} --help lists no SB_ variable:\n{out}"
    return names, prefixes


@functools.cache
def required(program):
    """The settings `program --help` marks as required: the daemon refuses to start without them
    (each may also come as <NAME>_FILE)."""
    return {m.group(1) for line in help_text(program).splitlines()
            if re.search(r"\brequired\b", line) for m in [HELP_VAR.search(line)] if m}


@functools.cache
def secret_settings(program):
    """The variables of the settings `program --help` marks "(secret)"."""
    return {m.group(1) for line in help_text(program).splitlines() if "(secret)" in line
            for m in [HELP_VAR.search(line)] if m}


def inline_secrets(program, env, where):
    """Problems for secrets that `env` ({name: value written inline}) holds as plain values."""
    secret = secret_settings(program) if program else set()
    return [f"{where}: {name} is a secret written inline" for name in sorted(env)
            if name in secret or SECRET_NAME.search(name)]


def missing_required(program, env, where):
    if program == "sbctl":  # a tool: its settings are checked per command
        return []
    return [f"{where}: {program} needs {name} (or {name}_FILE), which is not set"
            for name in sorted(required(program))
            if name not in env and name + "_FILE" not in env]


@functools.cache
def rdkafka():
    lib = ctypes.CDLL(ctypes.util.find_library("rdkafka") or "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_conf_destroy.argtypes = [ctypes.c_void_p]
    return lib


def kafka_property_error(prop, value):
    """None when librdkafka accepts `prop = value`, else its message."""
    lib = rdkafka()
    conf = lib.rd_kafka_conf_new()
    err = ctypes.create_string_buffer(512)
    try:
        rc = lib.rd_kafka_conf_set(conf, prop.encode(), value.encode(), err, len(err))
    finally:
        lib.rd_kafka_conf_destroy(conf)
    return None if rc == 0 else err.value.decode()


def check_env(program, env, where):
    """Problems with the variables `env` ({name: value}) that `where` sets for `program`."""
    names, prefixes = accepted(program)
    problems = []
    for name, value in env.items():
        if name in names:
            continue
        prefix = next((p for p in prefixes if name.startswith(p) and len(name) > len(p)), None)
        if prefix is None:
            problems.append(f"{where}: {program} has no setting {name} (see {program} --help)")
            continue
        prop = name[len(prefix):].lower().replace("_", ".")
        error = kafka_property_error(prop, value)
        if error:
            problems.append(f"{where}: {name} (librdkafka {prop}): {error}")
    return problems


def listen_port(value, where):
    host, _, port = value.rpartition(":")
    assert host in ("0.0.0.0", "[::]", "::"), \
        f"{where}: listens on {value}: probes from outside the container cannot reach it"
    return int(port)


# --- Kubernetes --------------------------------------------------------------------------------

def k8s_files():
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@functools.cache
def kustomization():
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def k8s_docs():
    docs = []
    for path in k8s_files():
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_data(kind):
    """{name: data keys} of the ConfigMaps or Secrets in the manifests; for ConfigMaps also those
    kustomization.yaml generates from files (key: the file's name)."""
    out = {}
    for _, d in k8s_docs():
        if d["kind"] == kind:
            out[d["metadata"]["name"]] = {**d.get("data", {}), **d.get("stringData", {})}
    if kind == "ConfigMap":
        for g in kustomization().get("configMapGenerator", []):
            out[g["name"]] = {pathlib.Path(f.split("=")[-1]).name: (K8S / f.split("=")[-1])
                              for f in g.get("files", [])}
    return out


def k8s_containers():
    """(file, pod spec, container) for every container and init container of every workload."""
    for name, d in k8s_docs():
        pod = d.get("spec", {}).get("template", {}).get("spec")
        if pod:
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield name, d, pod, c


def k8s_program(where, c):
    """The sensorbus program a container runs, or None for a helper image's container."""
    if c["image"] in HELPER_IMAGES:
        return None
    assert c["image"] == IMAGE, f"{where}: image {c['image']} is neither {IMAGE} nor a helper"
    command = c.get("command") or []
    program = os.path.basename(command[0]) if command else None
    assert program in PROGRAMS, f"{where}: command {command} runs none of {PROGRAMS}"
    return program


def k8s_env(where, c, configmaps, secrets, problems):
    """({name: value}, {name: value} of those written inline) of a container's variables,
    ConfigMap references resolved."""
    env, inline = {}, {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = inline[e["name"]] = str(e["value"])
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            if r["key"] not in configmaps.get(r["name"], {}):
                problems.append(
                    f"{where}: {e['name']}: ConfigMap {r['name']} has no key {r['key']}")
            value = str(configmaps.get(r["name"], {}).get(r["key"], ""))
            env[e["name"]] = inline[e["name"]] = value
        elif "secretKeyRef" in ref:
            r = ref["secretKeyRef"]
            if r["key"] not in secrets.get(r["name"], {}):
                problems.append(f"{where}: {e['name']}: Secret {r['name']} has no key {r['key']}")
            env[e["name"]] = "secret"
        else:
            problems.append(f"{where}: {e['name']}: unexpected source {ref}")
    for src in c.get("envFrom", []):
        cm = src.get("configMapRef", {}).get("name")
        for k, v in configmaps.get(cm, {}).items():
            env[k] = inline[k] = str(v)
    return env, inline


def k8s_mounted_files(pod, c, kind, data, problems, where):
    """The paths of the files a container sees from its `kind` ("secret" or "configMap")
    volumes; `data` is k8s_data() of that kind."""
    mounts = {m["name"]: m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
    files = set()
    for v in pod.get("volumes", []):
        if v["name"] not in mounts or kind not in v:
            continue
        name = v[kind]["secretName" if kind == "secret" else "name"]
        if name not in data:
            problems.append(f"{where}: volume {v['name']}: no {kind} {name} in deploy/k8s")
            continue
        keys = data[name]
        items = v[kind].get("items") or [{"key": k, "path": k} for k in keys]
        for i in items:
            if i["key"] not in keys:
                problems.append(f"{where}: volume {v['name']}: {kind} {name} has no key {i['key']}")
            files.add(f"{mounts[v['name']]}/{i['path']}")
    return files


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_k8s_manifest_is_valid(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path.name} holds no resource"
    for d in docs:
        what = f"{path.name}: {d.get('kind')}/{d['metadata'].get('name')}"
        error = None
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            error = f"{what}: {e.message} at {'.'.join(map(str, e.path))}"
        assert error is None, error
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "sensorbus", f"{what}: not in sensorbus"


def test_kustomization_lists_every_manifest_but_the_secret_template():
    kust = kustomization()
    expected = {p.name for p in k8s_files()} - {SECRET_TEMPLATE}
    assert set(kust["resources"]) == expected
    for g in kust.get("configMapGenerator", []):
        for f in g.get("files", []):
            assert (K8S / f.split("=")[-1]).is_file(), f"configMapGenerator {g['name']}: no {f}"
    # Every image a container names is one the kustomization can point at your registry.
    named = {c["image"].split(":")[0] for _, _, _, c in k8s_containers()}
    assert named <= {i["name"] for i in kust.get("images", [])}, f"images: {sorted(named)}"


def test_secret_template_holds_only_placeholders():
    secrets = k8s_data("Secret")
    assert set(secrets) == {"sensorbus"}
    for key, value in secrets["sensorbus"].items():
        assert "REPLACE" in value, f"{SECRET_TEMPLATE}: {key} looks like a real value"


def test_secret_template_has_no_key_that_nothing_reads():
    """A key no pod reads is a leftover that tells operators to create a secret for nothing."""
    used = set()
    for _, _, pod, c in k8s_containers():
        for e in c.get("env", []):
            r = e.get("valueFrom", {}).get("secretKeyRef")
            if r and r["name"] == "sensorbus":
                used.add(r["key"])
        for v in pod.get("volumes", []):
            if v.get("secret", {}).get("secretName") == "sensorbus":
                used |= {i["key"] for i in v["secret"].get("items", [])}
    assert set(k8s_data("Secret")["sensorbus"]) == used


def test_k8s_pods_get_no_service_links():
    """Service links set <SERVICE>_SERVICE_HOST, <SERVICE>_PORT... for every Service of the
    namespace: the Service sb-gateway gives SB_GATEWAY_SERVICE_HOST, which the gateway refuses
    as an unknown setting of its own, and any Service named like a daemon would do the same."""
    for name, d, pod, _ in k8s_containers():
        assert pod.get("enableServiceLinks") is False, \
            f"{name}: {d['kind']}/{d['metadata']['name']}: enableServiceLinks is not false"


def test_k8s_containers_set_only_settings_their_program_accepts():
    configmaps, secrets = k8s_data("ConfigMap"), k8s_data("Secret")
    problems, seen = [], set()
    for name, d, pod, c in k8s_containers():
        where = f"{name}: {d['kind']}/{d['metadata']['name']}/{c['name']}"
        program = k8s_program(where, c)
        env, inline = k8s_env(where, c, configmaps, secrets, problems)
        problems += inline_secrets(program, inline, where)
        secret_files = k8s_mounted_files(pod, c, "secret", secrets, problems, where)
        k8s_mounted_files(pod, c, "configMap", configmaps, problems, where)
        for var, path in env.items():
            if var.endswith("_FILE") and path not in secret_files:
                problems.append(
                    f"{where}: {var}={path} is no mounted Secret file ({sorted(secret_files)})")
        # The namespace enforces the "restricted" Pod Security Standard, which refuses a pod
        # without these; the read-only root filesystem is the project's own rule.
        sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") or sc.get("runAsNonRoot"), f"{where}: may run as root"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities"
        seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", f"{where}: seccompProfile"
        assert sc.get("readOnlyRootFilesystem"), f"{where}: writable root filesystem"
        if program is None:
            continue
        seen.add(program)
        problems += check_env(program, env, where)
        problems += missing_required(program, env, where)

        if program in HEALTH_LISTEN:
            var = HEALTH_LISTEN[program]
            assert var in env, f"{where}: {var} is not set (the default is loopback only)"
            port = listen_port(env[var], where)
            named = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
                p = c[probe]["httpGet"]["port"]
                assert named.get(p, p) == port, f"{where}: {probe} port {p} is not {var}'s {port}"
            annotations = d["spec"]["template"]["metadata"].get("annotations", {})
            assert annotations.get("prometheus.io/port") == str(port), f"{where}: scrape port"
    assert not problems, "\n".join(problems)
    assert seen == set(PROGRAMS), f"the manifests run {sorted(seen)}"


def test_k8s_gateway_connects_as_its_own_role():
    """The gateway's DSN is pg-gateway-dsn (sb_gateway, bound by row-level security), which the
    setup Job checks; the owner's pg-dsn there would let a forgotten WHERE clause leak tenants."""
    for name, d, pod, c in k8s_containers():
        if k8s_program(name, c) != "sb-gateway":
            continue
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        path = env.get("SB_GATEWAY_PG_DSN_FILE")
        assert path and path.endswith("/pg-gateway-dsn"), f"{name}: SB_GATEWAY_PG_DSN_FILE={path}"
        keys = {i["path"]: i["key"] for v in pod["volumes"] if "secret" in v
                for i in v["secret"].get("items", [])}
        assert keys.get("pg-gateway-dsn") == "pg-gateway-dsn", f"{name}: {keys}"


# --- Compose -----------------------------------------------------------------------------------

@functools.cache
def compose():
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def interpolate(value):
    """A compose value with ${VAR:-default} replaced by its default (${VAR} by '')."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def compose_env(svc):
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: interpolate(v) for k, v in env.items()}


def compose_program(name, svc):
    """The sensorbus program a service built from the image runs, or None for other images."""
    if "build" not in svc:
        return None
    command = " ".join(map(str, (svc.get("entrypoint") or []) + (svc.get("command") or [])))
    alternatives = "|".join(map(re.escape, PROGRAMS))
    programs = set(re.findall(rf"(?<![\w-])({alternatives})(?![\w-])", command))
    assert len(programs) == 1, f"service {name}: runs {programs or 'no program'}: {command}"
    return programs.pop()


def test_compose_dependencies_and_secrets():
    c = compose()
    services = c["services"]
    expected = {"kafka", "postgres", "redis", "s3", "setup", "gateway-role", "gateway",
                "sensor-ingest", "anomaly-detector", "order-processor", "s3-archiver"}
    assert expected <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], \
                    f"{name} waits for {dep}, which has no healthcheck"
        for s in svc.get("secrets", []):
            assert (s if isinstance(s, str) else s["source"]) in c["secrets"], f"{name}: secret {s}"
        for v in svc.get("volumes", []):
            source = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if source.startswith("."):
                assert (COMPOSE_DIR / source).is_file(), f"{name}: mounts missing {source}"
    for name, svc in services.items():
        if compose_program(name, svc) in HEALTH_LISTEN:
            condition = svc["depends_on"]["setup"]["condition"]
            assert condition == "service_completed_successfully", f"{name} starts before setup ends"
    role = services["gateway"]["depends_on"]["gateway-role"]["condition"]
    assert role == "service_completed_successfully", "the gateway starts before its role exists"
    for name, s in c["secrets"].items():
        assert set(s) == {"file"} and s["file"].startswith("./secrets/"), f"secret {name}: {s}"
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q",
                                  str(COMPOSE_DIR / s["file"])])
        assert ignored.returncode == 0, f"git does not ignore deploy/compose/{s['file']}"


def test_compose_services_set_only_settings_their_program_accepts():
    c = compose()
    problems, seen = [], set()
    for name, svc in c["services"].items():
        where = f"compose service {name}"
        program = compose_program(name, svc)
        env = compose_env(svc)
        problems += inline_secrets(program, env, where)
        mounted = {f"/run/secrets/{s if isinstance(s, str) else s['source']}"
                   for s in svc.get("secrets", [])}
        for var, path in env.items():
            if var.endswith("_FILE") and path not in mounted:
                problems.append(f"{where}: {var}={path} is not a mounted secret")
        if program is None:
            continue
        seen.add(program)
        problems += check_env(program, env, where)
        problems += missing_required(program, env, where)
        if program in HEALTH_LISTEN:
            port = listen_port(env[HEALTH_LISTEN[program]], where)
            test = " ".join(svc["healthcheck"]["test"])
            assert f":{port}/readyz" in test, f"{where}: healthcheck {test} misses port {port}"
    assert not problems, "\n".join(problems)
    assert seen == set(PROGRAMS), f"compose runs {sorted(seen)}"


def test_compose_gateway_connects_as_its_own_role():
    env = compose_env(compose()["services"]["gateway"])
    assert env["SB_GATEWAY_PG_DSN_FILE"] == "/run/secrets/pg_gateway_dsn"


@pytest.mark.skipif(not shutil.which("openssl"), reason="make-secrets needs openssl")
def test_make_secrets_creates_what_compose_mounts(tmp_path):
    """make-secrets (run in a copy of deploy/compose) creates every secret compose.yaml mounts,
    only readable inside a private folder, each DSN or URL with the password it belongs to, and
    keeps existing files on a second run."""
    shutil.copy(COMPOSE_DIR / "make-secrets", tmp_path)
    run = [str(tmp_path / "make-secrets")]
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    secrets = tmp_path / "secrets"
    assert secrets.stat().st_mode & 0o077 == 0, "secrets/ is open to others"
    files = {p.name: p.read_text().strip() for p in secrets.iterdir()}
    assert set(files) == {pathlib.Path(s["file"]).name for s in compose()["secrets"].values()}
    for name, value in files.items():
        assert value, f"secrets/{name} is empty"
    for dsn, user, password in (("pg_dsn", "sb", "pg_password"),
                                ("pg_gateway_dsn", "sb_gateway", "pg_gateway_password")):
        assert f" user={user} " in files[dsn], f"{dsn}: {user} is not its role"
        assert files[dsn].endswith(f" password={files[password]}"), f"{dsn}: not {password}"
    assert files["redis_url"] == f"redis://:{files['redis_password']}@redis:6379/0"
    generated = [v for n, v in files.items() if not n.endswith(("_dsn", "_url"))]
    assert len(set(generated)) == len(generated), "two secrets share a value"
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    assert {p.name: p.read_text().strip() for p in secrets.iterdir()} == files, \
        "a second run changed an existing secret"
