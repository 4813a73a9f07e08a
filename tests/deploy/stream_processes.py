"""The stream processes (``services/stream/``) the deployment files run: one table for the deploy tests."""

from __future__ import annotations

import re
from dataclasses import dataclass

from model_store.settings import REPO_ROOT
from services.stream.settings import StreamSettings


@dataclass(frozen=True)
class StreamProcess:
    """One long-running process: its module, the ``role`` label of its metrics, whether it writes files."""

    module: str
    role: str
    writes_files: bool
    optional: bool = False

    @property
    def command(self) -> list[str]:
        return ["python", "-m", f"services.stream.{self.module}"]

    def role_in_source(self) -> bool:
        """The module's role factory names this role (``Role(name="...")``)."""
        source = (REPO_ROOT / "services" / "stream" / f"{self.module}.py").read_text()
        return self.role in re.findall(r'Role\(\s*name="([^"]+)"', source) and (
            'if __name__ == "__main__":' in source
        )


# Keyed by the name of the compose service and of the Kubernetes Deployment.
STREAM_PROCESSES = {
    "stream-processor": StreamProcess("processor", "windows", writes_files=False),
    "stream-traffic-log": StreamProcess("traffic", "traffic-log", writes_files=True),
    "stream-landing": StreamProcess("landing", "landing", writes_files=True),
    "stream-scorer": StreamProcess("scorer", "stream-scorer", writes_files=False, optional=True),
    "stream-shadow": StreamProcess("shadow", "shadow", writes_files=False),
}
# /livez, /readyz and /metrics of every stream process, unless RTML_STREAM_HEALTH_PORT says otherwise.
HEALTH_PORT = StreamSettings.model_fields["stream_health_port"].default


def duration_seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds: stop grace periods are compared with Kubernetes'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)
