"""A private Mosquitto broker on a free loopback port, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: The limits every broker we start or ship sets deliberately (deploy/mosquitto mirrors
#: them; a test keeps the two in agreement). Mosquitto's defaults (1000 queued, 20 in
#: flight) silently drop a backlog and cap batches at 20 messages.
BROKER_LIMITS: dict[str, str] = {
    "max_queued_messages": "1000000",
    "max_queued_bytes": "536870912",
    "max_inflight_messages": "0",
    "max_packet_size": "1048576",
    "persistent_client_expiration": "7d",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """Runs ``mosquitto`` with beiflow's limits and its own persistence directory."""

    def __init__(self, *, port: int = 0, binary: str | None = None,
                 workdir: Path | None = None, extra: str = "", listener_options: str = "",
                 allow_anonymous: bool = True, tls: bool = False) -> None:
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise FileNotFoundError("mosquitto not found: run `make setup` or "
                                    "`apt-get install mosquitto`")
        self.binary = found
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="beiflow-mqtt-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.extra = extra
        #: Lines for the listener (``cafile``/``certfile``/``keyfile``/``require_certificate``
        #: for a TLS-only broker: pass ``tls=True`` too, so ``url`` says ``mqtts``).
        self.listener_options = listener_options
        self.allow_anonymous = allow_anonymous
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>`` (``mqtts://`` for a TLS listener)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        """The configuration file this broker runs with."""
        limits = "\n".join(f"{k} {v}" for k, v in BROKER_LIMITS.items())
        listener = f"{self.listener_options.strip()}\n" if self.listener_options.strip() else ""
        anonymous = "true" if self.allow_anonymous else "false"
        return (f"listener {self.port} 127.0.0.1\n{listener}allow_anonymous {anonymous}\n"
                f"persistence true\npersistence_location {self.workdir}/\n"
                f"autosave_interval 60\nlog_dest file {self.workdir}/mosquitto.log\n"
                f"{limits}\n{self.extra}\n")

    def start(self) -> PrivateBroker:
        """Start and wait until the port accepts connections."""
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        self._hand_over_workdir()
        # own session: a Ctrl-C in the terminal must not kill the broker before the
        # pipeline has committed and acknowledged what it holds
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr \
                    else ""
                raise RuntimeError(f"mosquitto exited: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    def _hand_over_workdir(self) -> None:
        """Started as root, mosquitto drops to its own user: let that user write its
        persistence file and log here, or sessions would not survive a restart."""
        if os.geteuid() != 0:
            return
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            return
        for path in (self.workdir, *self.workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)

    def stop(self) -> None:
        """Terminate (the persistence directory is kept until ``close``)."""
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def close(self) -> None:
        """Stop and remove the temporary directory."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrivateBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
