"""One settings object for the whole system.

Precedence, highest first: a CLI flag (passed as keyword overrides), an environment
variable ``STRATUM_*`` (nested sections with ``__``, e.g. ``STRATUM_SERVE__MAX_BATCH_SIZE``),
a YAML file, the default. The object is built once at the edge (CLI, process entry point)
and handed down; nothing deeper reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from stratum.config.monitor import MonitorSettings
from stratum.config.paths import PathList
from stratum.config.servers import (
    ClientTlsSettings,
    ControlHttpLimits,
    GatewayHttpLimits,
    ReplicaHttpLimits,
    TlsSettings,
)
from stratum.errors import ConfigError


class DataSettings(BaseModel):
    shards: int = Field(8, ge=1, le=4096)
    replicas: int = Field(2, ge=1, le=16)
    # Rows per streamed batch during ingest; bounds peak memory.
    batch_rows: int = Field(65_536, ge=1_000)


class TrainSettings(BaseModel):
    max_restarts: int = Field(3, ge=0)
    master_port: int = Field(29_500, ge=1024, le=65_535)
    threads_per_worker: int | None = None


class ServeSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65_535)
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(2.0, ge=0)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    runtime_threads: int | None = None
    # How a torch network runs: exported to ONNX Runtime at load (checked against the
    # network; whole graph without the GIL) or eager PyTorch.
    torch_backend: Literal["onnxruntime", "eager"] = "onnxruntime"
    # torch.compile the network at load (eager backend; slower start).
    compile: bool = False
    # Where a torch network runs. auto: on the GPU when this replica was given one (Ray
    # sets CUDA_VISIBLE_DEVICES for a replica deployed with --gpus; locally, when one is
    # there), else on the CPU through torch_backend. On a GPU it runs eager PyTorch: the
    # ONNX Runtime we ship is the CPU build.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Autocast a GPU forward pass to bfloat16 (about 2x the matrix throughput on Ampere
    # and later; probabilities may move in the third decimal). Ignored on the CPU.
    bf16: bool = False
    # Serve conv nets in the channels-last (NHWC) layout oneDNN is fastest on.
    channels_last: bool = True
    # How long /admin/drain and a retiring version wait for requests in flight.
    drain_timeout_s: float = Field(30.0, gt=0)
    # The replica's GIL switch interval. The forward thread needs the GIL back after
    # every torch op while a busy event loop holds it; Python's 5 ms default can stall
    # each op that long.
    switch_interval_ms: float = Field(0.5, gt=0)
    http: ReplicaHttpLimits = Field(default_factory=lambda: ReplicaHttpLimits())
    # HTTPS for replicas; with client_ca_file only clients with a certificate of that CA
    # (gateways and the control plane, through ``client_tls``) get through: mutual TLS.
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings())


class GatewaySettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65_535)
    policy: Literal["least_outstanding", "round_robin", "consistent_hash"] = "least_outstanding"
    hash_header: str = "x-session-id"
    retries: int = Field(2, ge=0)
    retry_budget: float = Field(0.2, ge=0, le=1)
    health_interval_s: float = Field(1.0, gt=0)
    # A named gateway checks the store for a new routing table this often (besides the
    # control plane's pushes), so every gateway of a deployment converges.
    routes_poll_s: float = Field(1.0, gt=0)
    eject_after_failures: int = Field(3, ge=1)
    require_auth: bool = False
    rate_limit_per_s: float | None = None
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Token-bucket depth per key; None → one second's worth of rate_limit_per_s.
    rate_limit_burst: float | None = Field(None, gt=0)
    # Where the buckets of both limits (the gateway's, each deployment's) live. None: a
    # table under the home that this host's gateways share; redis://HOST:PORT/DB: that
    # Redis, for gateways on several hosts (falls back to the host's table, failing open,
    # when Redis does not answer within rate_limit_timeout_s).
    rate_limit_url: str | None = None
    rate_limit_timeout_s: float = Field(0.1, gt=0, le=10)
    upstream_timeout_s: float = Field(30.0, gt=0)
    # How long a verified (or unknown) API key is trusted before the store is asked again;
    # also the bound on how late a revocation takes effect.
    auth_cache_s: float = Field(5.0, ge=0)
    shadow_max_inflight: int = Field(64, ge=0)
    # A deployment scaled to zero: requests wait here while a replica starts, at most this
    # long and this many (their bodies too), past either a 503 with retry-after.
    hold_timeout_s: float = Field(30.0, gt=0)
    hold_max_requests: int = Field(128, ge=0)
    http: GatewayHttpLimits = Field(default_factory=lambda: GatewayHttpLimits())
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings())


class ControlSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65_535)
    reconcile_interval_s: float = Field(1.0, gt=0)
    restart_backoff_s: float = Field(0.5, gt=0)
    restart_backoff_max_s: float = Field(10.0, gt=0)
    # A replica of a version never seen ready gets this many starts before the update fails.
    start_attempts: int = Field(2, ge=1)
    ready_timeout_s: float = Field(120.0, gt=0)
    # How often a standby control plane tries for the lease (PostgreSQL) and a leader
    # checks it still holds it: failover takes about this plus the new leader's start.
    lease_poll_s: float = Field(0.5, gt=0)
    # Admin requests are small JSON documents.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Autoscaling (deploy --min/--max-replicas): each gateway's in-flight requests are read
    # this often and averaged over autoscale_window_s; the target and the cooldown are the
    # defaults a deployment gets when it names none (docs/control.md, "Autoscaling").
    autoscale_interval_s: float = Field(0.5, gt=0)
    autoscale_window_s: float = Field(3.0, gt=0)
    autoscale_target_inflight: float = Field(8.0, gt=0)
    scale_down_cooldown_s: float = Field(60.0, ge=0)
    # Audit records older than this are deleted by the leader, hourly (control.retention);
    # 0 keeps them forever.
    audit_retention_days: int = Field(90, ge=0)
    http: ControlHttpLimits = Field(default_factory=lambda: ControlHttpLimits())
    tls: TlsSettings = Field(default_factory=lambda: TlsSettings())


class ClusterSettings(BaseModel):
    """Where replicas (``deploy --backend``) and training (``train --backend``) run:
    ``local`` processes of this machine, or a Ray cluster (docs/cluster.md)."""

    backend: Literal["local", "ray"] = "local"
    # The Ray head's GCS, HOST:PORT. None: the local cluster `stratum cluster up` started
    # for this home.
    address: str | None = None
    # Ray's token authentication: the token file the cluster's nodes were started with.
    # None: the local cluster's, else Ray's own defaults (RAY_AUTH_TOKEN, ~/.ray/auth_token).
    auth_token_file: Path | None = None
    # How long an address where no Ray answers is tried before a clear error.
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    # What each replica placed through Ray asks of its node, unless `deploy --cpus/--gpus`.
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0)
    # GPUs each Ray Train worker asks of its node, unless `train --gpus-per-worker`. 0: the
    # workers train on CPUs (also on a node with GPUs: Ray gave them none).
    train_gpus_per_worker: float = Field(0.0, ge=0, le=64)


class OnlineSettings(BaseModel):
    batch_size: int = Field(64, ge=1)
    replay_size: int = Field(2_000, ge=0)
    learning_rate: float = Field(1e-3, gt=0)
    steps: int = Field(60, ge=1)
    # torch threads of the learner: it shares the machine with the replicas it feeds, and
    # one thread per core in every process oversubscribes a small machine badly.
    threads: int = Field(1, ge=1)
    holdout_tolerance: float = Field(0.01, ge=0)
    # A challenger is made once this many new feedback rows arrived, or once the oldest
    # unused one waited max_wait_s, or at once when drift fires.
    update_every: int = Field(256, ge=1)
    max_wait_s: float = Field(5.0, gt=0)
    # The recent-feedback window the gate judges on; one row in eval_every is kept out of
    # fine-tuning so both models are judged on rows neither was trained on.
    recent_window: int = Field(500, ge=20)
    eval_every: int = Field(4, ge=2)
    min_eval_rows: int = Field(20, ge=1)
    # One-sided McNemar z the challenger's gain on recent feedback must reach.
    z_min: float = Field(1.645, ge=0)
    holdout_rows: int = Field(2_000, ge=10)
    promote_alias: str = "production"
    # A rejected challenger stays a run record (metrics, decision); true also registers it
    # as a version (alias `candidate`), the learner's behaviour before issue 12.
    register_rejected: bool = False
    # Feedback stays leased (unacked) until the update that uses it is committed; a
    # learner killed mid-batch gets it back after this long.
    visibility_timeout_s: float = Field(120.0, gt=0)
    # How often a replica writes the inputs it served to the request log.
    capture_flush_ms: float = Field(20.0, gt=0)
    log_sample_rate: float = Field(1.0, ge=0, le=1)
    log_retention_s: float = Field(7 * 24 * 3600, gt=0)
    # Input columns (feature names) masked before a request is logged.
    log_pii_columns: list[str] = Field(default_factory=list)
    # A file (relative to the home, or absolute) holding a key of 16+ bytes: masked values
    # become HMAC-SHA256 digests, equal for equal values, so counts and joins still work.
    # Unset: every masked value becomes "***".
    log_pii_key_file: Path | None = None
    # The log keeps at most this many rows (the newest; about 550 bytes each), pruned by
    # its writers every tenth of it, besides log_retention_s. None: no bound but age.
    log_max_rows: int | None = Field(1_000_000, ge=10)
    # Drift: rows per window, PSI above which a feature drifted, KS significance level
    # (Bonferroni-corrected over features), share of drifted features that raises an
    # alert, and the drop of feedback accuracy below the baseline that raises one.
    drift_window: int = Field(500, ge=20)
    drift_psi_threshold: float = Field(0.2, gt=0)
    drift_ks_alpha: float = Field(0.01, gt=0, lt=1)
    drift_feature_fraction: float = Field(0.1, gt=0, le=1)
    accuracy_drop: float = Field(0.1, gt=0, le=1)


class Settings(BaseSettings):
    """Root of all configuration; see the module docstring for precedence."""

    model_config = SettingsConfigDict(
        env_prefix="STRATUM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Path(".stratum")
    metadata_url: str | None = None
    artifact_url: str | None = None
    artifact_options: dict[str, Any] = Field(default_factory=dict)
    # Keys that encrypt artifacts at rest (``stratum artifacts keygen``): the first seals
    # every write, any of them opens a read (rotation). Empty: stored as written.
    artifact_key_files: PathList = Field(default_factory=list)
    queue_url: str | None = None
    log_level: str = "INFO"

    data: DataSettings = Field(default_factory=lambda: DataSettings())
    train: TrainSettings = Field(default_factory=lambda: TrainSettings())
    serve: ServeSettings = Field(default_factory=lambda: ServeSettings())
    gateway: GatewaySettings = Field(default_factory=lambda: GatewaySettings())
    control: ControlSettings = Field(default_factory=lambda: ControlSettings())
    online: OnlineSettings = Field(default_factory=lambda: OnlineSettings())
    cluster: ClusterSettings = Field(default_factory=lambda: ClusterSettings())
    monitor: MonitorSettings = Field(default_factory=lambda: MonitorSettings())
    client_tls: ClientTlsSettings = Field(default_factory=lambda: ClientTlsSettings())

    @model_validator(mode="after")
    def _fill_urls(self) -> Settings:
        # Defaults hang off `home`, so one flag moves the whole embedded installation.
        # Absolute from here on: children start in another folder (config/child.py).
        home = self.home = self.home.expanduser().resolve()
        if self.metadata_url is None:
            self.metadata_url = f"sqlite:///{(home / 'stratum.db').resolve()}"
        if self.artifact_url is None:
            self.artifact_url = str((home / "artifacts").resolve())
        if self.queue_url is None:
            self.queue_url = f"sqlite:///{(home / 'queue.db').resolve()}"
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _CONFIG_FILE.get("path")
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    def child_env(self) -> dict[str, str]:
        """Environment that hands these exact settings to a child process."""
        return {"STRATUM_SETTINGS_JSON": self.model_dump_json()}


# pydantic-settings takes the YAML path at class level; this holds it for one load.
_CONFIG_FILE: dict[str, Path | None] = {"path": None}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings: ``overrides`` (CLI flags) > ``STRATUM_*`` env > YAML file > defaults.

    ``config_file`` falls back to ``STRATUM_CONFIG``. Overrides that are ``None`` are
    ignored so that unset CLI flags do not mask lower layers.

    >>> load_settings(home="/tmp/x").home
    PosixPath('/tmp/x')
    """
    inherited = os.environ.get("STRATUM_SETTINGS_JSON")
    if inherited and config_file is None and all(v is None for v in overrides.values()):
        # A child process started by Stratum: take the parent's settings verbatim.
        return Settings.model_validate_json(inherited)
    raw = config_file or os.environ.get("STRATUM_CONFIG")
    path = Path(raw) if raw is not None else None
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    clean = {k: v for k, v in overrides.items() if v is not None}
    _CONFIG_FILE["path"] = path
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc
    finally:
        _CONFIG_FILE["path"] = None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return f"invalid settings{where}: " + "; ".join(parts)
