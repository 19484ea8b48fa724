"""The strategies by name: what ``TrainConfig.strategy`` may say and how each one runs.

A ``Kind`` says how to make the loop's ``Strategy`` in a worker process, whether the run
needs launched worker processes at all, how few workers make sense, how many processes
run beside the workers (a parameter server's servers) and, where some processes do not
run the loop, the body they run instead (``process``: it returns True when it handled
this process). The worker entry point (``worker.run_worker``) and ``fit`` read only this
table, so every launcher (local processes, Ray Train) runs every strategy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stratum.errors import ConfigError
from stratum.train.config import TrainConfig
from stratum.train.ensemble import run_members
from stratum.train.fedavg import FedAvg
from stratum.train.fsdp import FSDP
from stratum.train.param_server import ParameterServer, serve_if_server
from stratum.train.strategies import DDP, Loader, Single, Strategy, WorkerEnv

if TYPE_CHECKING:
    from stratum.store import Store
    from stratum.train.loop import Job, Report

ProcessBody = Callable[["Job", "Store", WorkerEnv, Loader, "Report | None"], bool]


def _no_servers(cfg: TrainConfig) -> int:
    return 0


@dataclass(frozen=True)
class Kind:
    make: Callable[[WorkerEnv, TrainConfig], Strategy]
    launched: bool  # in worker processes started by a launcher (else in fit's process)
    min_workers: int = 1
    beside: Callable[[TrainConfig], int] = _no_servers  # processes besides the workers
    process: ProcessBody | None = None


STRATEGIES: dict[str, Kind] = {
    "single": Kind(lambda env, cfg: Single(env), launched=False),
    "ddp": Kind(lambda env, cfg: DDP(env), launched=True),
    "parameter_server": Kind(ParameterServer, launched=True, min_workers=2,
                             beside=lambda cfg: cfg.parameter_server.servers,
                             process=serve_if_server),
    "fsdp": Kind(FSDP, launched=True, min_workers=2),
    "fedavg": Kind(FedAvg, launched=True, min_workers=2),
    # members in parallel processes, each running the loop with Single
    "ensemble": Kind(lambda env, cfg: Single(env), launched=True, process=run_members),
}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ConfigError(
            f"unknown strategy {name!r}", hint=f"choose one of {', '.join(sorted(STRATEGIES))}"
        )
    return name


def strategy_kind(name: str) -> Kind:
    return STRATEGIES[check_strategy(name)]


def make_strategy(cfg: TrainConfig, env: WorkerEnv) -> Strategy:
    return strategy_kind(cfg.resolved_strategy()).make(env, cfg)


def is_distributed(name: str) -> bool:
    return strategy_kind(name).launched


def processes(cfg: TrainConfig) -> int:
    """How many processes a launcher starts for ``cfg``: the workers and any beside them."""
    return cfg.workers + strategy_kind(cfg.resolved_strategy()).beside(cfg)


def check_workers(cfg: TrainConfig) -> str:
    """The strategy's name, once it is known and fits ``workers``; else a ConfigError."""
    name = check_strategy(cfg.resolved_strategy())
    kind = STRATEGIES[name]
    if cfg.workers > 1 and not kind.launched:
        raise ConfigError(f"strategy {name!r} runs one worker but workers is {cfg.workers}",
                          hint="set workers: 1 or strategy: ddp")
    if cfg.workers < kind.min_workers:
        raise ConfigError(
            f"strategy {name!r} needs at least {kind.min_workers} workers; workers is "
            f"{cfg.workers}", hint=f"set workers: {kind.min_workers} (--workers) or more")
    if name == "ensemble" and cfg.ensemble is None:
        raise ConfigError("strategy 'ensemble' needs an ensemble: section with members",
                          hint="see docs/training.md, Ensembles")
    return name
