"""Kubernetes execution through Snakemake's executor plugin, checked without a cluster.

`workflow/profiles/kubernetes` runs every job as a Kubernetes Job whose inputs and outputs
live in S3 (pods share no filesystem). Two small HTTP fakes on localhost stand in for the
cloud: an S3 endpoint (a dict of buckets, reached through the storage plugin's
SNAKEMAKE_STORAGE_S3_ENDPOINT_URL) and a Kubernetes API server (reached through a
kubeconfig) that records the Secret and the Job the plugin creates. So the real plugins,
clients and profile run unchanged, and the test reads the exact Job spec submitted.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import pytest
import yaml
from conftest import REPO, sandbox_env
from pipeline_utils import cluster_config, copy_repo, planned_resources, run

PROFILE = "workflow/profiles/kubernetes"
BUCKET, PREFIX = "my-bucket", "lopt"  # the profile's default-storage-prefix
CONFIG = cluster_config("quadk8s", {"gpus": 2, "gpu_model": "a100", "cpus": 4, "mem_mb": 16000, "runtime": 180})
# Seconds-scale, but every kind of path a job uses: a dataset (prepare-data, then read by
# meta-train and by one of the two evaluations) and a quadratic evaluation with no data.
DIGITS = {"kind": "image_mlp", "dataset": "digits", "hidden_sizes": [4], "batch_size": 16}
STORAGE_CONFIG = {
    "name": "s3run",
    "meta_train": {"task": DIGITS, "num_particles": 4, "trunc_length": 5, "horizon": 10, "outer_steps": 3},
    "evaluation": {"num_steps": 10, "eval_every": 10, "num_seeds": 1, "baselines": ["sgd"],
                   "lr_grid": {"low": 0.01, "high": 0.1, "num": 2},
                   "tasks": [{"name": "quad", "task": {"kind": "quadratic"}}, {"name": "digits4", "task": DIGITS}]},
}
ACCESS_KEY, SECRET_KEY = "fake-access-key", "fake-secret-key"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # boto3 keeps connections alive and sends Expect: 100-continue

    def log_message(self, *args):
        pass

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/json", headers=(), length=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FakeKubernetes(_Handler):
    """The API calls the executor plugin makes: create Secret and Job, poll, delete."""

    def _json(self, code: int, obj: dict):
        self._send(code, json.dumps(obj).encode())

    def do_POST(self):
        body = json.loads(self._body())
        kind = self.path.rstrip("/").rsplit("/", 1)[-1]  # .../namespaces/<ns>/{secrets,jobs}
        self.server.created.append((self.path, kind, body))
        if kind == "jobs":
            self.server.job_created.set()
        self._json(201, body)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path.endswith("/status"):  # read_namespaced_job_status: still running
            self._json(200, {"apiVersion": "batch/v1", "kind": "Job",
                             "metadata": {"name": path.split("/")[-2]}, "status": {"active": 1}})
        elif path.endswith("/pods"):
            self._json(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
        else:
            self._json(404, {"kind": "Status", "apiVersion": "v1", "code": 404})

    def do_DELETE(self):
        self._json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


class FakeS3(_Handler):
    """Path-style S3 over a dict: objects and buckets (HEAD/GET/PUT/DELETE), ListObjects."""

    def _split(self):
        url = urlsplit(self.path)
        bucket, _, key = url.path.lstrip("/").partition("/")
        return self.server.buckets.get(bucket), bucket, key, parse_qs(url.query)

    def do_HEAD(self):
        objects, _, key, _ = self._split()
        if objects is None or (key and key not in objects):
            return self._send(404)
        if not key:
            return self._send(200)
        data, mtime = objects[key]
        self._send(200, length=len(data), ctype="application/octet-stream",
                   headers=[("Last-Modified", formatdate(mtime, usegmt=True)), ("ETag", '"0"')])

    def do_GET(self):
        objects, bucket, key, query = self._split()
        if objects is None or (key and key not in objects):
            return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        if key:
            return self._send(200, objects[key][0], "application/octet-stream")
        prefix = query.get("prefix", [""])[0]
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>"
            f"{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(mtime))}</LastModified>"
            f'<ETag>"0"</ETag><Size>{len(data)}</Size><StorageClass>STANDARD</StorageClass></Contents>'
            for k, (data, mtime) in sorted(objects.items()) if k.startswith(prefix)
        )
        xml = ('<?xml version="1.0" encoding="UTF-8"?>'
               '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
               f"<Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><Marker></Marker>"
               f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>")
        self._send(200, xml.encode(), "application/xml")

    def do_PUT(self):
        _, bucket, key, _ = self._split()
        data = self._body()
        objects = self.server.buckets.setdefault(bucket, {})
        if key:
            objects[key] = (data, time.time())
        self._send(200, headers=[("ETag", '"0"')])

    def do_DELETE(self):
        objects, bucket, key, _ = self._split()
        if key and objects is not None:
            objects.pop(key, None)
        elif not key:
            self.server.buckets.pop(bucket, None)
        self._send(204)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # clients killed mid-request (the test stops snakemake after the submission) reset
        # their connections; anything else is a bug in the fakes and is reported
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _serve(handler) -> ThreadingHTTPServer:
    server = _QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.buckets, server.created, server.job_created = {}, [], threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def k8s_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kubernetes")
    repo = copy_repo(tmp / "repo")
    (repo / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    s3, k8s = _serve(FakeS3), _serve(FakeKubernetes)
    s3.buckets[BUCKET] = {}
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{k8s.server_port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
    }))
    env = sandbox_env(tmp)
    for var in list(env):  # nothing of the real cloud or proxies leaks in
        if var.startswith(("AWS_", "SNAKEMAKE_STORAGE_", "KUBE")) or var.lower().endswith("_proxy"):
            del env[var]
    env.update(
        KUBECONFIG=str(kubeconfig),
        NO_PROXY="127.0.0.1,localhost",
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3.server_port}",
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY=ACCESS_KEY,
        SNAKEMAKE_STORAGE_S3_SECRET_KEY=SECRET_KEY,
        AWS_CONFIG_FILE=str(tmp / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    yield repo, env, s3, k8s
    for server in (s3, k8s):
        server.shutdown()
        server.server_close()


def test_kubernetes_profile_plans_every_rule_in_storage_with_configured_resources(k8s_repo):
    repo, env, _, _ = k8s_repo
    proc, _ = run(["snakemake", "-n", "--profile", PROFILE, "--configfile", "cfg.yaml"], repo, env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_resources(proc.stdout)
    assert {"meta_train", "evaluate", "analyze"} <= set(jobs), jobs
    meta = jobs["meta_train"].split(": ", 1)[1].split(", ")
    for item in ("gpu=2", "mem_mb=16000", "gpu_manufacturer=nvidia", "scale=0", "disk_mb=10000"):
        assert item in meta, meta
    evaluate = jobs["evaluate"].split(": ", 1)[1].split(", ")
    assert "gpu=" not in evaluate and "mem_mb=4000" in evaluate, evaluate
    # no shared filesystem: every input and output is an object under the storage prefix
    assert f"s3://{BUCKET}/{PREFIX}/results/quadk8s/meta/meta_params.npz (send to storage)" in proc.stdout


def test_kubernetes_job_requests_the_configured_gpus_memory_and_cpus(k8s_repo):
    repo, env, s3, k8s = k8s_repo
    # a persistent volume for compute.checkpoint_root, as the profile's comment shows
    cmd = ["snakemake", "results/quadk8s/meta/meta_params.npz", "--profile", PROFILE, "--configfile", "cfg.yaml",
           "--kubernetes-persistent-volumes", "lopt-checkpoints:/checkpoints"]
    log = repo.parent / "submit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not k8s.job_created.wait(0.5):
            assert proc.poll() is None, "snakemake exited before submitting:\n" + log.read_text()[-3000:]
            assert time.time() < deadline, "no Job created within 120 s:\n" + log.read_text()[-3000:]
    finally:
        proc.kill()
        proc.wait()
    created = {kind: (path, body) for path, kind, body in k8s.created}
    path, job = created["jobs"]
    assert path == "/apis/batch/v1/namespaces/default/jobs"
    assert job["metadata"]["name"].startswith("snakejob-")
    assert job["spec"]["backoffLimit"] == 0  # Snakemake's --retries decides, not Kubernetes
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    assert container["image"] == profile["container-image"]
    # the claim outlives the pod: a retried job finds the killed one's checkpoints there
    assert {"name": "lopt-checkpoints", "mountPath": "/checkpoints"} in container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["lopt-checkpoints"]["persistentVolumeClaim"] == {"claimName": "lopt-checkpoints"}

    # resources.meta_train: 2 GPUs, 16000 MB, 4 cpus (threads; the plugin scales requests by
    # 0.95). GPUs must be limits too, or the API server rejects the pod.
    resources = {k: v or {} for k, v in container["resources"].items()}
    limits = {"nvidia.com/gpu": "2", "memory": "16000M", "cpu": "4000m", "ephemeral-storage": "10000M"}
    requests = limits | {"cpu": "3800m"}
    assert {k: resources.get("limits", {}).get(k) for k in limits} == limits, resources
    assert {k: resources.get("requests", {}).get(k) for k in requests} == requests, resources
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
            "effect": "NoSchedule"} in pod["tolerations"]

    # the pod fetches the sources from the bucket, then runs exactly this rule
    script = container["args"][-1]
    assert "--target-jobs 'meta_train:'" in script, script
    archive = script.split("--deploy-sources ", 1)[1].split()[0]
    assert archive.startswith(f"s3://{BUCKET}/{PREFIX}/snakemake-workflow-sources.")
    assert archive.removeprefix(f"s3://{BUCKET}/") in s3.buckets[BUCKET]

    # S3 credentials reach the pod through the run's Secret, never in the spec itself
    secret_path, secret = created["secrets"]
    assert secret_path == "/api/v1/namespaces/default/secrets"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["snakemake_storage_s3_access_key"] == ACCESS_KEY
    assert data["snakemake_storage_s3_secret_key"] == SECRET_KEY
    env_vars = {e["name"]: e for e in container["env"]}
    ref = env_vars["SNAKEMAKE_STORAGE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "snakemake_storage_s3_secret_key"}
    assert SECRET_KEY not in json.dumps(job)


def _storage_run(repo, env, config: dict, *targets: str) -> subprocess.CompletedProcess:
    """A local Snakemake run (no executor) whose every input and output goes through the
    default storage, as in a pod of the Kubernetes profile: the fake S3 bucket."""
    (repo / "storage_cfg.yaml").write_text(yaml.safe_dump(config))
    cmd = ["snakemake", *targets, "--cores", "2", "--configfile", "storage_cfg.yaml",
           "--default-storage-provider", "s3", "--default-storage-prefix", f"s3://{BUCKET}/{PREFIX}"]
    proc, _ = run(cmd, repo, env, timeout=600)
    return proc


def test_kubernetes_plan_passes_lopt_only_the_jobs_storage_paths(k8s_repo):
    """Under a default storage provider a job sees its files as local copies under
    .snakemake/storage/s3/<bucket>/<prefix>/; every path `lopt` gets must be one of those
    (a results/ or data/ path would be written where nothing uploads it, or read from
    where nothing fetched it)."""
    repo, env, _, _ = k8s_repo
    (repo / "storage_cfg.yaml").write_text(yaml.safe_dump(STORAGE_CONFIG))
    proc, _ = run(["snakemake", "-n", "-p", "--profile", PROFILE, "--configfile", "storage_cfg.yaml"], repo, env,
                  timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local = f".snakemake/storage/s3/{BUCKET}/{PREFIX}/"
    commands = [line.split(": ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("Shell command: lopt")]
    assert len(commands) == 7, commands  # prepare-data, meta-train, 2 x baselines, 2 x evaluate, analyze
    for command in commands:
        words = command.split()
        for flag in ("--out", "--results", "--data-root", "--checkpoint", "--baselines"):
            if flag in words:
                assert words[words.index(flag) + 1].startswith(local), command
    assert sum("--data-root" in c for c in commands) == 4, commands  # not the quadratic task's jobs
    assert sum("--baselines" in c for c in commands) == 2, commands
    # evaluate reads the optimizer's metadata too, so it must be fetched with the weights
    assert f"s3://{BUCKET}/{PREFIX}/results/s3run/meta/meta_params.npz.json (retrieve from storage)" in proc.stdout


@pytest.mark.e2e
def test_pipeline_through_default_storage_puts_every_output_in_the_bucket(k8s_repo):
    """Every stage runs against the fake S3 exactly as a pod would (inputs fetched from the
    bucket, outputs uploaded to it), and the experiment's final outputs land in the bucket."""
    repo, env, s3, _ = k8s_repo
    proc = _storage_run(repo, env, STORAGE_CONFIG)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    keys = set(s3.buckets[BUCKET])
    results = f"{PREFIX}/results/s3run"
    expected = [f"{PREFIX}/data/digits/{f}" for f in ("manifest.json", "train.npz", "test.npz")]
    expected += [f"{results}/meta/{f}" for f in ("meta_params.npz", "meta_params.npz.json", "metrics.csv",
                                                 "model_card.md")]
    expected += [f"{results}/baselines/{t}/{f}" for t in ("quad", "digits4") for f in ("settings.json", "curves.csv")]
    expected += [f"{results}/eval/{t}/{f}" for t in ("quad", "digits4")
                 for f in ("curves.csv", "summary.csv", "sweep.csv", "metrics.csv")]
    expected += [f"{results}/{f}" for f in ("figures/meta_training.png", "figures/eval_curves.png",
                                             "tables/final_losses.md", "tables/summary.csv", "tables/metrics.csv",
                                             "tables/across_tasks.md", "tables/tradeoffs.md", "model_card.md")]
    missing = sorted(set(expected) - keys)
    assert not missing, f"not in the bucket: {missing}\n" + proc.stderr[-3000:]
    summary = s3.buckets[BUCKET][f"{results}/tables/summary.csv"][0].decode()
    assert "digits4" in summary and "quad" in summary and "lopt" in summary
    # nothing was written to (or read from) the working tree's data/ or results/
    assert not (repo / "data").exists() and not (repo / "results").exists()
