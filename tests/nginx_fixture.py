"""A throwaway nginx running ``deploy/nginx.conf`` (the documented configuration) for tests.

The documented file is rendered, not rewritten: only the upstream addresses, the listen ports and
the certificate paths are substituted (each must occur exactly once, so a change of the documented
file's shape breaks the test loudly instead of testing something else). TLS is real: a self-signed
certificate is generated with ``openssl``. When nginx is missing, tests that need it are skipped
with the reason, unless ``SALTLINE_REQUIRE_NGINX=1`` (CI): then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.pg import free_port

REPO = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO / "deploy" / "nginx.conf"
DOC_UPSTREAMS = ("127.0.0.1:8081", "127.0.0.1:8082")
DOC_CERT = "/etc/letsencrypt/live/chat.example.com/fullchain.pem"
DOC_KEY = "/etc/letsencrypt/live/chat.example.com/privkey.pem"


def find_nginx() -> Path | None:
    found = shutil.which("nginx")
    if found:
        return Path(found)
    for candidate in ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"):
        if Path(candidate).exists():
            return Path(candidate)
    return None


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"deploy/nginx.conf must contain {old!r} exactly once (found {count})")
    return text.replace(old, new)


def render_site(upstreams: list[int], http_port: int, https_port: int, cert: Path, key: Path) -> str:
    """deploy/nginx.conf with the test's ports and certificate (two upstream instances)."""
    text = NGINX_CONF.read_text()
    if len(upstreams) != len(DOC_UPSTREAMS):
        raise ValueError("the documented configuration has two upstream instances")
    for doc, port in zip(DOC_UPSTREAMS, upstreams, strict=True):
        text = _replace_once(text, f"server {doc} ", f"server 127.0.0.1:{port} ")
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _replace_once(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = _replace_once(text, DOC_CERT, str(cert))
    return _replace_once(text, DOC_KEY, str(key))


@dataclass
class Nginx:
    binary: Path
    root: Path
    upstreams: list[int]
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    @property
    def cert(self) -> Path:
        return self.root / "cert.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the self-signed certificate (and checks it)."""
        ctx = ssl.create_default_context(cafile=str(self.cert))
        ctx.check_hostname = False
        return ctx

    def start(self, timeout: float = 10.0) -> Nginx:
        key = self.root / "key.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-nodes",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(self.cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        (self.root / "saltline.conf").write_text(
            render_site(self.upstreams, self.http_port, self.https_port, self.cert, key)
        )
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = "\n".join(f"    {kind}_temp_path {self.root / kind};" for kind in kinds)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (self.root / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.root / 'nginx.pid'};\n"
            f"error_log {self.root / 'error.log'} warn;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}\n    include {self.root / 'saltline.conf'};\n}}\n"
        )
        args = [
            str(self.binary),
            "-p",
            str(self.root),
            "-c",
            str(self.root / "nginx.conf"),
            "-e",
            str(self.root / "error.log"),
        ]
        test = subprocess.run([*args, "-t"], capture_output=True, timeout=30)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {test.stderr.decode(errors='replace')}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.error_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError("nginx did not start in time")
            time.sleep(0.02)
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.https_port), timeout=0.5):
                return True
        except OSError:
            return False

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def start_nginx(upstreams: list[int]) -> Nginx:
    binary = find_nginx()
    if binary is None:
        raise FileNotFoundError("nginx is not installed")
    if shutil.which("openssl") is None:
        raise FileNotFoundError("openssl is not installed (needed for the test certificate)")
    root = Path(tempfile.mkdtemp(prefix="saltline-nginx-"))
    os.chmod(root, 0o755)
    return Nginx(binary, root, upstreams).start()
