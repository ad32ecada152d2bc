"""Settings every service shares. Each service extends ``CommonSettings`` with its own fields,
builds one instance in its ``__main__`` and passes it down; nothing reads the environment later."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VMFLOW_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    log_level: str = "info"
    log_json: bool | None = None  # None: JSON unless writing to a terminal
    event_stream: str = "VMFLOW_EVENTS"
    heartbeat_bucket: str = "vmflow_hosts"
    # Copies JetStream keeps of the event stream and every KV bucket: 3 on a NATS cluster of 3.
    jetstream_replicas: int = 1
    # Prometheus metrics on http://metrics_host:metrics_port/metrics; 0: none. The API serves
    # its own on its port (GET /metrics) and ignores these.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
