"""``parameter_server``: S server processes hold the parameters, W workers push gradients
and pull parameters (point-to-point messages over the run's gloo group).

Ranks ``0..W-1`` are workers and run the one training loop; ranks ``W..W+S-1`` are servers
and run ``Server.run`` instead. Parameter ``name`` lives on server
``crc32(name) % S`` (a stable hash: the same partition on every process and every
restart). Each message is a header ``[command, worker, lr, payload length]`` on tag 1,
any payload on tag 2, a server's answer on tag 3.

- ``sync`` (default): a server waits for the gradient of every worker, applies their mean
  with its own optimizer (the config's, at the learning rate the workers' schedule sends)
  and answers every worker with the new values: the same update as ddp.
- ``async``: a server applies each worker's gradient as it comes and answers at once,
  unless that worker is more than ``staleness`` steps ahead of the slowest one; then the
  answer waits (stale synchronous parallel).

Checkpoints are sharded by server: at a save the workers meet, worker 0 asks each server
for its partition and optimizer state and publishes them (``server-{s}.pt``); on resume it
sends each server its file back and every worker pulls. Worker 0 starts fresh servers with
its initial weights. A dead worker or server fails the group and the launcher restarts
it from the last checkpoint, as for ddp.
"""

from __future__ import annotations

import io
import zlib
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from stratum.train.components import build_optimizer
from stratum.train.strategies import DDP, WorkerEnv, init_group

if TYPE_CHECKING:
    from stratum.store import Store
    from stratum.train.checkpoint import Checkpoint
    from stratum.train.config import TrainConfig
    from stratum.train.loop import Job, Report
    from stratum.train.strategies import Loader

STEP, PULL, INIT, SAVE, RESTORE, STOP = range(6)
HEADER, DATA, ANSWER = 1, 2, 3


def owner(name: str, servers: int) -> int:
    """The server holding parameter ``name``: a stable hash, the same in every process."""
    return zlib.crc32(name.encode()) % servers


def _header(cmd: int, worker: int, lr: float = 0.0, length: int = 0) -> torch.Tensor:
    return torch.tensor([cmd, worker, lr, length], dtype=torch.float64)


class ParameterServer(DDP):
    """The worker side: the loop's strategy on ranks ``0..W-1``."""

    name = "parameter_server"
    gpu_per_rank = False  # its messages are CPU tensors over gloo: workers may share a GPU

    def __init__(self, env: WorkerEnv, cfg: TrainConfig) -> None:
        init_group(env, torch.device("cpu"))  # messages are CPU tensors: gloo, even on GPU
        super().__init__(env)
        servers = cfg.parameter_server.servers
        self.world = env.world - servers  # the loop sees the workers only
        self.servers = list(range(self.world, env.world))
        self.group = dist.new_group(list(range(self.world)))  # every process makes it
        self.sync = cfg.parameter_server.mode == "sync"
        self.parts: list[list[nn.Parameter]] = []
        self.started = False

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        named = sorted(model.named_parameters())
        self.parts = [[p for n, p in named if owner(n, len(self.servers)) == s]
                      for s in range(len(self.servers))]
        layout = [(n, list(p.shape)) for n, p in named]
        dist.broadcast_object_list([layout], src=0)  # the servers build their partitions
        return model

    def _send(self, server: int, cmd: int, lr: float = 0.0,
              payload: torch.Tensor | None = None) -> None:
        dst = self.servers[server]
        dist.send(_header(cmd, self.rank, lr, 0 if payload is None else payload.numel()),
                  dst=dst, tag=HEADER)
        if payload is not None:
            dist.send(payload, dst=dst, tag=DATA)

    def _receive_parameters(self) -> None:
        for s, params in enumerate(self.parts):
            flat = torch.empty(sum(p.numel() for p in params))
            dist.recv(flat, src=self.servers[s], tag=ANSWER)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(flat.to(self.device), params)

    def _pull(self) -> None:
        for s in range(len(self.servers)):
            self._send(s, PULL)
        self._receive_parameters()

    def _start(self) -> None:
        """Fresh servers take worker 0's initial weights (every worker has the same)."""
        if self.started:
            return
        self.started = True
        if self.rank == 0:
            for s, params in enumerate(self.parts):
                self._send(s, INIT, payload=_flat(params))

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                checkpoint: Checkpoint) -> None:
        self.started = True
        # the workers' optimizer steps nothing, but its learning rate is what they send
        optimizer.load_state_dict(torch.load(io.BytesIO(checkpoint.read("workers.pt")),
                                             weights_only=True))
        if self.rank == 0:
            for s in range(len(self.servers)):
                blob = checkpoint.read(f"server-{s}.pt")
                self._send(s, RESTORE, payload=torch.frombuffer(bytearray(blob), dtype=torch.uint8))
        self._pull()  # before the first forward pass: the checkpoint's weights

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._start()
        lr = float(optimizer.param_groups[0]["lr"])
        for s, params in enumerate(self.parts):
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            self._send(s, STEP, lr, torch.cat([g.reshape(-1) for g in grads]).cpu())
        self._receive_parameters()

    def end_epoch(self, model: nn.Module) -> None:
        if not self.sync:  # async workers drift apart: validate one set of weights
            self._start()
            dist.barrier(group=self.group)
            self._pull()

    def checkpoint_files(self, model: nn.Module, optimizer: torch.optim.Optimizer
                         ) -> dict[str, bytes] | None:
        self._start()
        dist.barrier(group=self.group)  # every push of every worker is applied
        if self.rank != 0:
            return {}
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        files = {"workers.pt": buf.getvalue()}
        for s in range(len(self.servers)):
            self._send(s, SAVE)
            size = torch.zeros(1, dtype=torch.int64)
            dist.recv(size, src=self.servers[s], tag=ANSWER)
            blob = torch.empty(int(size.item()), dtype=torch.uint8)
            dist.recv(blob, src=self.servers[s], tag=ANSWER)
            files[f"server-{s}.pt"] = blob.numpy().tobytes()
        return files

    def close(self) -> None:
        if dist.is_initialized():
            for s in range(len(self.servers)):
                self._send(s, STOP)
        super().close()


def _flat(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(params).detach().cpu()


class Server:
    """One server process: its partition of the parameters and their optimizer."""

    def __init__(self, cfg: TrainConfig, layout: list[tuple[str, list[int]]], index: int,
                 workers: int) -> None:
        servers = cfg.parameter_server.servers
        self.names = [n for n, _ in layout if owner(n, servers) == index]
        shapes = dict(layout)
        self.params = nn.ParameterList(
            [nn.Parameter(torch.zeros(shapes[n])) for n in self.names])
        self.optimizer = build_optimizer(cfg, self.params)
        self.workers, self.ready = workers, False
        self.sync = cfg.parameter_server.mode == "sync"
        self.staleness = cfg.parameter_server.staleness
        self.grads: dict[int, torch.Tensor] = {}  # sync: this step's gradient per worker
        self.clock = [0] * workers  # async: updates applied per worker
        self.held: set[int] = set()  # async: workers whose answer waits for the slowest
        self.stopped: set[int] = set()
        self.deferred: list[tuple[int, int, float, torch.Tensor | None]] = []

    def run(self) -> None:
        while len(self.stopped) < self.workers:
            header = torch.zeros(4, dtype=torch.float64)
            src = dist.recv(header, tag=HEADER)
            cmd, lr, length = int(header[0]), float(header[2]), int(header[3])
            payload = None
            if length:
                payload = torch.empty(length, dtype=torch.uint8 if cmd == RESTORE
                                      else torch.float32)
                dist.recv(payload, src=src, tag=DATA)
            self.handle(src, cmd, lr, payload)

    def handle(self, src: int, cmd: int, lr: float, payload: torch.Tensor | None) -> None:
        if cmd in (INIT, RESTORE):
            self._load(cmd, payload)
            self.ready = True
            pending, self.deferred = self.deferred, []
            for item in pending:
                self.handle(*item)
        elif not self.ready and cmd in (STEP, PULL):
            self.deferred.append((src, cmd, lr, payload))  # worker 0 has not started us yet
        elif cmd == STEP and payload is not None:
            self._step(src, lr, payload)
        elif cmd == PULL:
            self._answer(src)
        elif cmd == SAVE:
            buf = io.BytesIO()
            torch.save({"params": {n: p.detach() for n, p in zip(self.names, self.params,
                                                                   strict=True)},
                        "optimizer": self.optimizer.state_dict()}, buf)
            blob = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
            dist.send(torch.tensor([blob.numel()], dtype=torch.int64), dst=src, tag=ANSWER)
            dist.send(blob, dst=src, tag=ANSWER)
        elif cmd == STOP:
            self.stopped.add(src)
            self._release()

    def _load(self, cmd: int, payload: torch.Tensor | None) -> None:
        assert payload is not None
        with torch.no_grad():
            if cmd == INIT:
                torch.nn.utils.vector_to_parameters(payload, list(self.params))
                return
            state: dict[str, Any] = torch.load(io.BytesIO(payload.numpy().tobytes()),
                                               weights_only=True)
            for n, p in zip(self.names, self.params, strict=True):
                p.copy_(state["params"][n])
        self.optimizer.load_state_dict(state["optimizer"])

    def _apply(self, grad: torch.Tensor, lr: float) -> None:
        offset = 0
        for p in self.params:
            p.grad = grad[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def _step(self, src: int, lr: float, grad: torch.Tensor) -> None:
        if self.sync:
            self.grads[src] = grad
            if len(self.grads) == self.workers - len(self.stopped):
                # in worker order: the same sum every time, as ddp's all-reduce
                self._apply(torch.stack([self.grads[w] for w in sorted(self.grads)]).mean(0),
                            lr)
                for worker in sorted(self.grads):
                    self._answer(worker)
                self.grads = {}
            return
        self._apply(grad, lr)
        self.clock[src] += 1
        self.held.add(src)
        self._release()

    def _release(self) -> None:
        """Async: answer each held worker that is at most ``staleness`` steps ahead."""
        running = [c for w, c in enumerate(self.clock) if w not in self.stopped]
        slowest = min(running, default=0)
        for worker in sorted(self.held):
            if self.clock[worker] - slowest <= self.staleness:
                self.held.discard(worker)
                self._answer(worker)

    def _answer(self, worker: int) -> None:
        dist.send(_flat(list(self.params)), dst=worker, tag=ANSWER)


def serve_if_server(job: Job, store: Store, env: WorkerEnv, load: Loader,
                    report: Report | None) -> bool:
    """The body of a server rank (True), or False on a worker rank, which trains."""
    cfg = job.config
    workers = env.world - cfg.parameter_server.servers
    if env.rank < workers:
        return False
    init_group(env, torch.device("cpu"))
    dist.new_group(list(range(workers)))  # collective: made in the same order everywhere
    got: list[Any] = [None]
    dist.broadcast_object_list(got, src=0)
    try:
        Server(cfg, got[0], env.rank - workers, workers).run()
    finally:
        dist.destroy_process_group()
    return True
