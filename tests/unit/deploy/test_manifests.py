"""deploy/: the Kubernetes manifests and the compose file, checked against the programs they run.

1. Every manifest in deploy/k8s is valid for Kubernetes 1.29 (kubernetes-validate's bundled
   schemas, strict: unknown fields fail), and kustomization.yaml lists every one of them but the
   Secret template.
2. Every environment variable a sensorbus container sets is one its program prints in `--help`
   (binaries from $SB_BUILD_DIR, default build), so renaming a setting fails here and not at
   deploy time; a kafka.* pass-through must be a property librdkafka knows.
3. Every ConfigMap or Secret key a container reads exists; every *_FILE setting names a file
   that is mounted; probes, healthchecks and scrape annotations use the port the daemon
   listens on, on all interfaces.
4. compose.yaml: dependencies name services, secrets come from git-ignored files, and no
   secret is written inline, there or in the manifests.

Needs `pip install -r tests/requirements.txt` and the three programs built, e.g.
`ninja -C build sb-gateway sb-sensor-ingest sbctl`.
"""

import ctypes
import ctypes.util
import functools
import os
import pathlib
import re
import subprocess

import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
COMPOSE_DIR = ROOT / "deploy" / "compose"
K8S_VERSION = "1.29.0"
SECRET_TEMPLATE = "secret.example.yaml"
PROGRAMS = ("sb-gateway", "sb-sensor-ingest", "sbctl")
# The setting each daemon serves /healthz, /readyz and /metrics on.
HEALTH_LISTEN = {
    "sb-gateway": "SB_GATEWAY_LISTEN",
    "sb-sensor-ingest": "SB_SENSOR_INGEST_HEALTH_LISTEN",
}
# Names of settings whose values are secrets: they may only arrive as files or secretKeyRef.
SECRET_NAME = re.compile(r"(PASSWORD|PEPPER|SECRET|CREDENTIAL|_DSN)$")


def build_dir():
    build = pathlib.Path(os.environ.get("SB_BUILD_DIR", "build"))
    return build if build.is_absolute() else ROOT / build


@functools.cache
def accepted(program):
    """(exact names, pass-through prefixes) of the environment variables `program --help` lists.

    `SB_X_PG_DSN[_FILE]` gives SB_X_PG_DSN and SB_X_PG_DSN_FILE; `SB_X_KAFKA_<PROPERTY>` gives
    the prefix SB_X_KAFKA_.
    """
    binary = build_dir() / program
    assert binary.is_file(), f"{binary} is not built (ninja -C {build_dir()} {program})"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    out = subprocess.run([str(binary), "--help"], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    names, prefixes = set(), set()
    for m in re.finditer(r"\b(SB_[A-Z0-9_]*[A-Z0-9])(\[_FILE\]|_<PROPERTY>)?", out):
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
    binary = build_dir() / program
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}
    out = subprocess.run([str(binary), "--help"], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return {m.group(1) for line in out.splitlines() if re.search(r"\brequired\b", line)
            for m in [re.search(r"\b(SB_[A-Z0-9_]*[A-Z0-9])(\[_FILE\])?", line)] if m}


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
def k8s_docs():
    docs = []
    for path in k8s_files():
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def k8s_data(kind):
    """{name: data keys} of the ConfigMaps or Secrets in the manifests."""
    out = {}
    for _, d in k8s_docs():
        if d["kind"] == kind:
            out[d["metadata"]["name"]] = {**d.get("data", {}), **d.get("stringData", {})}
    return out


def k8s_containers():
    """(file, pod spec, container) for every container and init container of every workload."""
    for name, d in k8s_docs():
        pod = d.get("spec", {}).get("template", {}).get("spec")
        if pod:
            for c in pod.get("initContainers", []) + pod["containers"]:
                yield name, d, pod, c


def k8s_program(where, c):
    command = c.get("command") or []
    program = os.path.basename(command[0]) if command else None
    assert program in PROGRAMS, f"{where}: command {command} runs none of {PROGRAMS}"
    return program


def k8s_env(where, c, configmaps, secrets, problems):
    """{name: value} of a container's variables, ConfigMap references resolved."""
    env = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = str(e["value"])
            if SECRET_NAME.search(e["name"]):
                problems.append(f"{where}: {e['name']} is a secret written inline")
        elif "configMapKeyRef" in ref:
            r = ref["configMapKeyRef"]
            if r["key"] not in configmaps.get(r["name"], {}):
                problems.append(
                    f"{where}: {e['name']}: ConfigMap {r['name']} has no key {r['key']}")
            env[e["name"]] = str(configmaps.get(r["name"], {}).get(r["key"], ""))
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
            env[k] = str(v)
    return env


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
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    expected = {p.name for p in k8s_files()} - {SECRET_TEMPLATE}
    assert set(kust["resources"]) == expected


def test_secret_template_holds_only_placeholders():
    secrets = k8s_data("Secret")
    assert set(secrets) == {"sensorbus"}
    for key, value in secrets["sensorbus"].items():
        assert "REPLACE" in value, f"{SECRET_TEMPLATE}: {key} looks like a real value"


def test_k8s_containers_set_only_settings_their_program_accepts():
    configmaps, secrets = k8s_data("ConfigMap"), k8s_data("Secret")
    problems, seen = [], set()
    for name, d, pod, c in k8s_containers():
        where = f"{name}: {d['kind']}/{d['metadata']['name']}/{c['name']}"
        program = k8s_program(where, c)
        seen.add(program)
        env = k8s_env(where, c, configmaps, secrets, problems)
        problems += check_env(program, env, where)
        problems += missing_required(program, env, where)

        mounts = {m["name"]: m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])}
        for var, path in env.items():
            if not var.endswith("_FILE"):
                continue
            files = set()
            for v in pod.get("volumes", []):
                if v["name"] in mounts and "secret" in v:
                    keys = secrets.get(v["secret"]["secretName"], {})
                    items = v["secret"].get("items") or [{"key": k, "path": k} for k in keys]
                    files |= {f"{mounts[v['name']]}/{i['path']}" for i in items if i["key"] in keys}
            if path not in files:
                problems.append(
                    f"{where}: {var}={path} is no mounted Secret file ({sorted(files)})")

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
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") and pod["securityContext"]["runAsNonRoot"]
    assert not problems, "\n".join(problems)
    assert seen == set(PROGRAMS), f"the manifests run {sorted(seen)}"


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


def test_compose_dependencies_and_secrets():
    c = compose()
    services = c["services"]
    expected = {"kafka", "postgres", "redis", "s3", "setup", "gateway", "sensor-ingest"}
    assert expected <= set(services)
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], \
                    f"{name} waits for {dep}, which has no healthcheck"
        for s in svc.get("secrets", []):
            assert (s if isinstance(s, str) else s["source"]) in c["secrets"], f"{name}: secret {s}"
        for var in compose_env(svc):
            assert not SECRET_NAME.search(var), f"{name}: {var} is a secret written inline"
    for name in ("gateway", "sensor-ingest"):
        condition = services[name]["depends_on"]["setup"]["condition"]
        assert condition == "service_completed_successfully", f"{name} starts before setup ends"
    for name, s in c["secrets"].items():
        assert set(s) == {"file"} and s["file"].startswith("./secrets/"), f"secret {name}: {s}"
        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q",
                                  str(COMPOSE_DIR / s["file"])])
        assert ignored.returncode == 0, f"git does not ignore deploy/compose/{s['file']}"


def test_compose_services_set_only_settings_their_program_accepts():
    c = compose()
    problems, seen = [], set()
    for name, svc in c["services"].items():
        if "build" not in svc:
            continue
        command = " ".join(map(str, (svc.get("entrypoint") or []) + (svc.get("command") or [])))
        programs = set(re.findall(r"(?<![\w-])(sb-gateway|sb-sensor-ingest|sbctl)(?![\w-])",
                                  command))
        assert len(programs) == 1, f"service {name}: runs {programs or 'no program'}: {command}"
        program = programs.pop()
        seen.add(program)
        env = compose_env(svc)
        problems += check_env(program, env, f"compose service {name}")
        problems += missing_required(program, env, f"compose service {name}")
        mounted = {f"/run/secrets/{s if isinstance(s, str) else s['source']}"
                   for s in svc.get("secrets", [])}
        for var, path in env.items():
            if var.endswith("_FILE") and path not in mounted:
                problems.append(f"service {name}: {var}={path} is not a mounted secret")
        if program in HEALTH_LISTEN:
            port = listen_port(env[HEALTH_LISTEN[program]], f"service {name}")
            test = " ".join(svc["healthcheck"]["test"])
            assert f":{port}/readyz" in test, \
                f"service {name}: healthcheck {test} misses port {port}"
    assert not problems, "\n".join(problems)
    assert seen == set(PROGRAMS), f"compose runs {sorted(seen)}"
