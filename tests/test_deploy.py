"""The deployment files (Dockerfile, deploy/), checked without Docker or a cluster (issue 13).

- hadolint lints the Dockerfile; the compose file and every Kubernetes manifest validate
  against schemas vendored in check-jsonschema and kubernetes-validate (offline).
- The image's start command (ENTRYPOINT + CMD, ENV, HOME, STOPSIGNAL), parsed from the
  Dockerfile, serves the tiny bundle outside Docker and drains on the stop signal
  within the stop grace period that compose and Kubernetes give it.
- A real Prometheus with deploy/prometheus/prometheus.yml scrapes a real server under a
  short load; every recording rule, alert expression, dashboard query and the
  Prometheus adapter's query returns data.

Tools (hadolint, check-jsonschema, kubernetes-validate, prometheus, promtool) are
installed by .ci/run; missing ones skip here and fail in CI (CI=true).
See docs/architecture.md for the server these files deploy.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.server_process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
VENV_BIN = Path(sys.executable).parent
TASK = "t2i_prompt"
UVICORN_SHUTDOWN_S = 2.0  # server/__main__.py: timeout_graceful_shutdown


def tool(name: str) -> str:
    """The tool's path; in CI a missing tool is a failure, elsewhere a skip."""
    found = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if found is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


# ---- the Dockerfile ------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its (INSTRUCTION, arguments) lines, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            current = stages.setdefault(name, [])
        current.append((instruction, rest.strip()))
    return stages


def runtime_contract(stage: list[tuple[str, str]]) -> dict[str, Any]:
    env: dict[str, str] = {}
    for instruction, rest in stage:
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    last = {instruction: rest for instruction, rest in stage}
    return {
        "env": env,
        "entrypoint": json.loads(last["ENTRYPOINT"]),
        "cmd": json.loads(last["CMD"]),
        "stopsignal": last["STOPSIGNAL"],
        "user": last["USER"],
        "expose": last["EXPOSE"],
        "healthcheck": last["HEALTHCHECK"],
        "workdir": last["WORKDIR"],
    }


def test_hadolint_clean() -> None:
    run(tool("hadolint"), str(ROOT / "Dockerfile"))


def test_serving_stages_share_one_runtime_contract() -> None:
    stages = dockerfile_stages()
    assert {"cpu", "gpu", "train"} <= stages.keys()
    assert list(stages)[-1] == "gpu", "gpu is the default target (the last stage)"
    cpu, gpu = runtime_contract(stages["cpu"]), runtime_contract(stages["gpu"])
    assert cpu == gpu
    assert cpu["entrypoint"] + cpu["cmd"] == ["python", "-m", "server", "serve"]
    assert cpu["user"] != "root" and cpu["user"] != "0"
    assert "/readyz" in cpu["healthcheck"]
    assert cpu["expose"] == cpu["env"]["PROMPTGEN_PORT"]
    # only the serving code in the serving stages: no training/, export/, torch
    for name in ("cpu", "gpu"):
        body = " ".join(rest for _, rest in stages[name])
        assert "training" not in body and "export" not in body and "torch" not in body
    froms = {name: stage[0][1] for name, stage in stages.items()}
    assert "CUDA_BASE" in froms["gpu"] and "CPU_BASE" in froms["cpu"]
    text = (ROOT / "Dockerfile").read_text()
    cuda_base = text.split("ARG CUDA_BASE=")[1].split()[0]
    # onnxruntime-gpu 1.31.1 is built for CUDA 13.0 + cuDNN 9 (its build_and_package_info.py)
    assert text.split("ARG ORT_GPU_VERSION=")[1].split()[0] == "1.31.1"
    assert re.search(r"cuda:13\.[\d.]+-cudnn-runtime", cuda_base), cuda_base
    assert '"onnxruntime-gpu==${ORT_GPU_VERSION}"' in " ".join(rest for _, rest in stages["gpu"])


def stop_budget() -> dict[str, float]:
    """What the server needs to drain and what compose and Kubernetes give it."""
    env = runtime_contract(dockerfile_stages()["cpu"])["env"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["promptgen"]
    return {
        "drain": float(env["PROMPTGEN_GRACE_PERIOD_S"]) + UVICORN_SHUTDOWN_S,
        "compose": float(compose["stop_grace_period"].rstrip("s")),
    }


def test_stop_grace_periods_cover_the_drain() -> None:
    budget = stop_budget()
    contract = runtime_contract(dockerfile_stages()["cpu"])
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["promptgen"]
    assert compose["stop_signal"] == contract["stopsignal"] == "SIGTERM"
    assert budget["compose"] > budget["drain"]
    assert compose["volumes"][0].split(":")[-2] == contract["env"]["PROMPTGEN_BUNDLE"]
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    stages = dockerfile_stages()
    for name in ("promptgen", "promptgen-cpu"):  # the gpu and cpu profiles
        service = services[name]
        assert service["build"]["target"] in stages
        assert service["stop_grace_period"] == compose["stop_grace_period"]
        assert "promptgen" in service["networks"]["default"]["aliases"]  # the scrape target's name
    for name in ("deployment-gpu.yaml", "deployment-cpu.yaml"):
        spec = yaml.safe_load((K8S / name).read_text())["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        env = {e["name"]: e["value"] for e in container["env"]}
        drain = float(env["PROMPTGEN_GRACE_PERIOD_S"]) + UVICORN_SHUTDOWN_S
        assert spec["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert env["PROMPTGEN_BUNDLE"] == contract["env"]["PROMPTGEN_BUNDLE"] in mounts
        assert contract["env"]["HOME"] in mounts  # the only writable path, read-only root fs
        assert container["resources"]["requests"] and container["resources"]["limits"]
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if name == "deployment-gpu.yaml" else None)


# ---- schemas -------------------------------------------------------------------------


def test_in_cluster_scrape_config_sets_the_labels_the_adapter_maps() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "promptgen"  # what the alert rules select on
    assert config["rule_files"] == ["rules.yml"]
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    adapter = yaml.safe_load(yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())["data"]["config.yaml"])
    assert set(adapter["rules"][0]["resources"]["overrides"]) <= targets


def test_compose_file_matches_the_compose_spec() -> None:
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))


def test_kubernetes_manifests_validate() -> None:
    manifests = sorted(str(p) for p in K8S.glob("*.yaml"))
    assert len(manifests) >= 6
    run(tool("kubernetes-validate"), "--strict", *manifests)


def test_promtool_checks_config_and_rules() -> None:
    promtool = tool("promtool")
    run(promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    run(promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yml"))


# ---- the image's start command, outside Docker ----------------------------------------


def generate(url: str, **extra: Any) -> httpx.Response:
    body = {"task": TASK, "input": "holiday sale", "controls": {"length": 8}, "max_new_tokens": 40, **extra}
    return httpx.post(f"{url}/v1/generate", json=body, timeout=30)


def in_engine(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("promptgen_requests_running{", "promptgen_requests_queued{"))
    )


def test_image_start_command_serves_and_drains_on_its_stop_signal(tiny_bundle: Path, tmp_path: Path) -> None:
    contract = runtime_contract(dockerfile_stages()["cpu"])
    env = dict(contract["env"])
    # The image's PATH puts /opt/venv/bin first; here the test's venv plays that part.
    env["PATH"] = f"{VENV_BIN}:{os.environ['PATH']}"
    env.pop("VIRTUAL_ENV")
    home = tmp_path / "home"  # HOME=/tmp in the image: the only user-writable path
    home.mkdir()
    env["HOME"] = str(home)
    # Not verified here: the path itself (/bundle) and 0.0.0.0; tests listen on loopback only.
    env["PROMPTGEN_BUNDLE"] = str(tiny_bundle)
    env["PROMPTGEN_HOST"] = "127.0.0.1"
    port = free_port()
    env["PROMPTGEN_PORT"] = str(port)
    env["PROMPTGEN_MAX_BATCH_SIZE"] = "2"  # tuning only: keeps requests in flight long enough to signal
    url = f"http://127.0.0.1:{port}"
    command = contract["entrypoint"] + contract["cmd"]
    log = tmp_path / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert generate(url).status_code == 200
        # the HEALTHCHECK's command, in the same environment: exit 0 while ready
        healthcheck = json.loads(contract["healthcheck"].split(" CMD ", 1)[1])
        assert subprocess.run(healthcheck, env=env, timeout=10).returncode == 0

        # Requests in flight when the stop signal arrives finish; later ones get 503.
        statuses: list[int] = []

        def client() -> None:
            try:
                statuses.append(generate(url, max_new_tokens=120).status_code)
            except httpx.ConnectError:
                statuses.append(0)  # arrived after the process stopped listening: refused, not cut off
            except httpx.TransportError:
                statuses.append(-1)  # accepted, then dropped: what a drain must never do

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        # signal only once requests are in the engine, so the drain has something to finish
        wait_until = time.monotonic() + 10
        while time.monotonic() < wait_until and in_engine(url) == 0:
            time.sleep(0.005)
        stop = getattr(signal, contract["stopsignal"])
        stopped_at = time.monotonic()
        process.send_signal(stop)
        code = process.wait(timeout=stop_budget()["compose"])
        took = time.monotonic() - stopped_at
        for t in threads:
            t.join(30)
        assert code == 0, log.read_text()[-3000:]
        assert took < stop_budget()["compose"]
        assert len(statuses) == len(threads) and set(statuses) <= {0, 200, 503}, statuses
        assert 200 in statuses, statuses
        text = log.read_text()
        assert '"draining"' in text and '"drained"' in text, text[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# ---- Prometheus, rules, dashboard, adapter --------------------------------------------


@pytest.fixture(scope="module")
def scraped(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server under a short load, scraped by a real Prometheus run with our
    prometheus.yml (loopback target, 1 s intervals, namespace/pod labels as the
    Kubernetes pod discovery would add). Yields Prometheus's URL."""
    prometheus = tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    server = ServerProcess(tiny_bundle, work / "server.log", variant="fp32", max_batch_size=8, intra_op_threads=1)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / rule) for rule in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{server.port}"], "labels": {"namespace": "default", "pod": "promptgen-0"}}
    ]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # load only once Prometheus scrapes the server, so the rates see every request
        deadline = time.monotonic() + 30
        while not has_data(url, 'up{job="promptgen"} == 1'):
            assert process.poll() is None and time.monotonic() < deadline, (work / "prometheus.log").read_text()
            time.sleep(0.2)
        load_until = time.monotonic() + 5

        def load() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                while time.monotonic() < load_until:
                    client.post("/v1/generate", json={"task": TASK, "input": "cozy", "n": 2, "max_new_tokens": 24})
                    client.post("/v1/generate", json={"task": "no_such_task", "input": "x"})  # errors by reason

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        # the last scrapes and rule evaluations after the load: every recorded series present
        recorded = [rule["record"] for rule in rules() if "record" in rule]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(has_data(url, name) for name in recorded):
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        server.stop()


def query(url: str, expr: str, allow_empty: bool = False) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
    assert response.status_code == 200, (expr, response.text)
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    if not allow_empty:
        assert result, f"no data: {expr}"
        values = [float(r["value"][1]) for r in result]
        assert any(not math.isnan(v) for v in values), f"only NaN: {expr} -> {result}"
    return result


def has_data(url: str, expr: str) -> bool:
    try:
        result = query(url, expr, allow_empty=True)
    except (httpx.TransportError, AssertionError):
        return False
    return any(not math.isnan(float(r["value"][1])) for r in result)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_recording_rule_returns_data(scraped: str) -> None:
    recorded = [rule["record"] for rule in rules() if "record" in rule]
    assert len(recorded) >= 10
    for name in recorded:
        query(scraped, name)


def test_every_alert_expression_returns_data(scraped: str) -> None:
    """An alert's expression compared with `bool`: a series per target whether or not
    it fires, so an expression on a missing metric name fails here."""
    alerts = [rule for rule in rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "PromptgenTargetDown",
        "PromptgenNotReady",
        "PromptgenSaturated",
        "PromptgenHighErrorRate",
    }
    for alert in alerts:
        expr = re.sub(r"\s(==|!=|>=|<=|>|<)\s", r" \1 bool ", alert["expr"])
        assert " bool " in expr, alert
        result = query(scraped, expr)
        assert all(r["value"][1] == "0" for r in result), f"fires on a healthy server: {alert['alert']}"


def test_dashboard_panels_all_have_queries_that_return_data(scraped: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "promptgen.json").read_text())
    panels = dashboard["panels"]
    assert panels
    for panel in panels:
        targets = panel.get("targets") or []
        assert targets, f"panel without a query: {panel['title']}"
        for target in targets:
            assert "$" not in target["expr"], "template variables are not resolved by this check"
            query(scraped, target["expr"])
    titles = " ".join(p["title"].lower() for p in panels)
    for series in ("latency", "first token", "tokens/s", "batch size", "queue depth", "errors"):
        assert series in titles


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "promptgen.yml").read_text())["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "promptgen.json").read_text())
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]} == {source["uid"]}


def test_adapter_rule_and_hpa_metric_return_data(scraped: str) -> None:
    config = yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())["data"]["config.yaml"]
    (rule,) = yaml.safe_load(config)["rules"]
    hpa = yaml.safe_load((K8S / "hpa.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = httpx.get(f"{scraped}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10).json()
    names = {s["__name__"] for s in series["data"]}
    assert names and all(re.search(rule["name"]["matches"], n) for n in names), series
    # what the adapter sends for "this metric for pods in namespace default"
    expr = (
        rule["metricsQuery"]
        .replace("<<.Series>>", names.pop())
        .replace("<<.LabelMatchers>>", 'namespace="default",pod=~"promptgen-0"')
        .replace("<<.GroupBy>>", "pod")
    )
    result = query(scraped, expr)
    assert result[0]["metric"] == {"pod": "promptgen-0"}
