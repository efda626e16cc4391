"""deploy/: what can be checked without a container engine, checked for real.

The Procfile's and the Dockerfile's start commands start the app and pass /readyz against the
test Redis; the Dockerfile's HEALTHCHECK passes; the YAML files parse and agree with each other
and with the settings the receiver reads; the nginx example, run by Debian's nginx in front of
the receiver, passes callbacks signed for the public https:// URL.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from receiver.config import load_settings
from receiver.server.network import free_port

from .support.certificates import issue
from .support.deployment_files import (
    DEPLOY,
    ROOT,
    compose_value,
    parse_dockerfile,
    procfile_command,
    start_until_ready,
    tool_path,
)
from .support.twilio_calls import CALLBACK_PATH, TOKEN, content, sid, sign

pytestmark = pytest.mark.slow  # starts servers or processes

KUBERNETES = DEPLOY / "kubernetes"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "twilio_auth_token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def base_env(redis_server, redis_client, token_file) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "PROMETHEUS_"))}
    return {
        **env,
        "PATH": tool_path(),
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "REDIS_URL": redis_server.url,
        "TWILIO_AUTH_TOKEN_FILE": str(token_file),
        "WEB_CONCURRENCY": "1",
    }


def signed_post(base: str, call_sid: str, public_base: str | None = None, **kwargs):
    params = content(call_sid, sid("GT"), 1, "through the front door")
    signature = sign((public_base or base) + CALLBACK_PATH, params)
    return requests.post(
        base + CALLBACK_PATH,
        data=params,
        headers={"X-Twilio-Signature": signature},
        timeout=30,
        **kwargs,
    )


def test_procfile_web_command_starts_the_app(base_env, tmp_path, call_sid):
    command = procfile_command(ROOT / "Procfile")
    assert "deploy/gunicorn.conf.py" in command  # which binds $PORT
    started = start_until_ready(["sh", "-c", f"exec {command}"], base_env, ROOT, tmp_path)
    try:
        assert signed_post(started.url, call_sid).json() == {"outcome": "stored"}
    finally:
        started.stop()


def test_dockerfile_starts_the_app_as_the_image_would(base_env, tmp_path, call_sid):
    stage = parse_dockerfile(DEPLOY / "Dockerfile")
    assert stage.user and stage.user not in ("root", "0"), "the image must not run as root"
    assert stage.cmd or stage.entrypoint
    # Lay out the image's working directory from its COPY instructions, and run there.
    app_dir = tmp_path / "image" / stage.workdir.lstrip("/")
    app_dir.mkdir(parents=True)
    for source, target in stage.copies:
        if target.startswith(stage.workdir.rstrip("/") + "/"):
            placed = app_dir / target[len(stage.workdir.rstrip("/")) + 1 :]
            placed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, placed)
    env = {**base_env, **{k: v for k, v in stage.env.items() if k not in ("PATH", "PORT")}}
    # The image's spool is a volume of its own; here it lives under the test's folder.
    assert stage.env.get("SPOOL_DIR", "").startswith("/var/lib/"), "the image names its spool"
    env["SPOOL_DIR"] = str(tmp_path / "image" / stage.env["SPOOL_DIR"].lstrip("/"))
    command = stage.entrypoint + stage.cmd
    started = start_until_ready(command, env, app_dir, tmp_path)
    try:
        assert signed_post(started.url, call_sid).json() == {"outcome": "stored"}
        health = subprocess.run(stage.healthcheck, env=env, cwd=app_dir, timeout=30)
        assert health.returncode == 0
    finally:
        started.stop()
    unhealthy = subprocess.run(
        stage.healthcheck, env=env, cwd=app_dir, timeout=30, capture_output=True
    )
    assert unhealthy.returncode != 0, "the HEALTHCHECK passes with nothing listening"


def test_dockerfile_user_matches_kubernetes_security_context():
    stage = parse_dockerfile(DEPLOY / "Dockerfile")
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == stage.user


def test_compose_file(token_file, redis_server):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    receiver, redis_service = compose["services"]["receiver"], compose["services"]["redis"]
    build = receiver["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
    assert "--appendonly" in redis_service["command"]
    assert redis_service["command"][redis_service["command"].index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis_service["volumes"]
    assert "redis-data" in compose["volumes"]
    (secret,) = receiver["secrets"]
    assert (DEPLOY / compose["secrets"][secret]["file"]).name == "twilio_auth_token"
    env = {
        name: compose_value(str(value), {"PUBLIC_BASE_URL": "https://rtt.example.com"})
        for name, value in receiver["environment"].items()
    }
    assert env["TWILIO_AUTH_TOKEN_FILE"] == f"/run/secrets/{secret}"
    assert "TWILIO_AUTH_TOKEN" not in env, "the token goes in a secret, not the environment"
    # The receiver accepts this environment (with the secret where this machine has it).
    settings = load_settings({**env, "TWILIO_AUTH_TOKEN_FILE": str(token_file)})
    assert settings.auth_tokens == (TOKEN,)
    assert settings.public_base_url == "https://rtt.example.com"
    assert settings.redis_url == "redis://redis:6379/0"
    with pytest.raises(AssertionError, match="PUBLIC_BASE_URL must be set"):
        compose_value(str(receiver["environment"]["PUBLIC_BASE_URL"]), {})
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert compose["secrets"][secret]["file"].lstrip("./") in ignored


def test_kubernetes_manifests(token_file):
    documents = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    assert set(documents) >= {"Deployment", "Service", "Secret", "PodDisruptionBudget"}
    pod_labels = documents["Deployment"]["spec"]["template"]["metadata"]["labels"]
    budget = documents["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert budget.items() <= pod_labels.items()
    deployment, service, secret = (documents[k] for k in ("Deployment", "Service", "Secret"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["port"] in ports
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    requests_ = container["resources"]["requests"]
    assert requests_["cpu"] and requests_["memory"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (secret_volume,) = [n for n, v in volumes.items() if "secret" in v]
    assert volumes[secret_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    (key,) = secret["stringData"]
    assert env["TWILIO_AUTH_TOKEN_FILE"] == f"{mounts[secret_volume]}/{key}"
    assert str(ports[container["livenessProbe"]["httpGet"]["port"]]) == env["PORT"]
    assert "/tmp" in mounts.values(), "the metrics directory needs a writable /tmp"
    settings = load_settings({**env, "TWILIO_AUTH_TOKEN_FILE": str(token_file)})
    assert settings.public_base_url and settings.redis_url


NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)


def nginx_site(receiver_port: int, https_port: int, http_port: int, cert: Path, key: Path) -> str:
    """The example site, with only its host, ports and certificate changed for loopback."""
    site = (DEPLOY / "nginx" / "rtt-receiver.conf").read_text()
    replacements = [
        (r"listen \[::\]:\d+[^;]*;\n", ""),
        (r"listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl"),
        (r"listen 80;", f"listen 127.0.0.1:{http_port};"),
        (r"server 127\.0\.0\.1:8000;", f"server 127.0.0.1:{receiver_port};"),
        (r"ssl_certificate /\S+;", f"ssl_certificate {cert};"),
        (r"ssl_certificate_key /\S+;", f"ssl_certificate_key {key};"),
        (r"server_name rtt\.example\.com;", "server_name localhost;"),
    ]
    for pattern, replacement in replacements:
        site, count = re.subn(pattern, replacement, site)
        assert count, f"the nginx example no longer has {pattern!r}"
    return site


@pytest.fixture
def nginx_in_front(tmp_path: Path, start_receiver):
    if NGINX is None:
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx-light)")
    receiver = start_receiver(PROXY_HOPS="1")
    https_port, http_port = free_port(), free_port()
    certificates = issue(tmp_path)
    work = tmp_path / "nginx"
    work.mkdir()
    (work / "site.conf").write_text(
        nginx_site(receiver.port, https_port, http_port, certificates.chain, certificates.key)
    )
    temp = {name: work / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
        path.chmod(0o777)
    (work / "nginx.conf").write_text(
        f"""
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {work}/site.conf;
}}
"""
    )
    nginx = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(work / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if nginx.poll() is not None:
                pytest.fail(f"nginx exited: {(work / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                subprocess.run(["sleep", "0.1"])
        yield f"https://localhost:{https_port}", http_port, certificates.ca
    finally:
        nginx.terminate()
        nginx.wait(10)


def test_nginx_example_passes_signatures_for_the_public_url(nginx_in_front, redis_client, call_sid):
    public, http_port, cert = nginx_in_front
    # Signed for the public https:// URL; the receiver itself only ever sees http://127.0.0.1.
    response = signed_post(public, call_sid, verify=str(cert))
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "stored"}
    assert redis_client.xlen(f"rtt:call:{{{call_sid}}}") == 1
    # A signature for the receiver's internal URL does not pass through the front door.
    params = content(call_sid, sid("GT"), 2, "x")
    internal = requests.post(
        public + CALLBACK_PATH,
        data=params,
        headers={
            "X-Twilio-Signature": sign("http://127.0.0.1" + CALLBACK_PATH, params),
            "X-Forwarded-Proto": "http",
            "X-Forwarded-Host": "127.0.0.1",
        },
        verify=str(cert),
        timeout=30,
    )
    assert internal.status_code == 403
    # Another host name never reaches the receiver (nginx closes the connection: 444).
    other_host = public.replace("localhost", "127.0.0.1")
    with pytest.raises(requests.ConnectionError):
        signed_post(other_host, call_sid, verify=str(cert))
    assert redis_client.xlen(f"rtt:call:{{{call_sid}}}") == 1
    # Plain http is sent to https, and /metrics stays private.
    redirect = requests.get(
        f"http://127.0.0.1:{http_port}/x", headers={"Host": "localhost"}, allow_redirects=False
    )
    assert redirect.status_code == 301
    assert redirect.headers["Location"].startswith("https://localhost")
    assert requests.get(public + "/metrics", verify=str(cert), timeout=30).status_code == 404
    assert requests.get(public + "/readyz", verify=str(cert), timeout=30).status_code == 200


def test_the_installed_package_carries_its_data_files():
    """The image installs the package (``pip install .``), not the source tree: every Lua
    script, conversation and template the package reads must be package data."""
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["receiver"]
    package = ROOT / "receiver"
    data = sorted(
        str(p.relative_to(package))
        for p in [*package.rglob("*.lua"), *package.rglob("*.yaml"), *package.rglob("*.html")]
    )
    assert "storage/lua/cluster_call.lua" in data
    for name in data:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
