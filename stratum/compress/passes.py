"""The passes: what each takes, checks before anything runs, and makes.

A pass is a small frozen object: ``check(kind)`` says what it makes of a version of that
kind (framework, quantized or not, architecture) or refuses with a ConfigError — so a
chain of passes is checked whole before any work starts — and ``run(work, parent)``
makes the child in memory (a spec and its weights file). ``pipeline.compress`` measures,
gates and registers the children.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from stratum.compress import distill as dst
from stratum.compress import prune as prn
from stratum.compress.export import to_onnx
from stratum.compress.quantize import MODES, quantize
from stratum.data import Dataset
from stratum.errors import ConfigError
from stratum.models import build_model, load_network, load_predictor, num_outputs
from stratum.store import LoadedModel, ModelSpec, Store
from stratum.store.sparse import is_packed_graph, pack_graph, sparsify

Report = Callable[[str, dict[str, Any]], None]


class Finetune(Protocol):
    """``stratum.train.tune.finetune``: the training loop, handed in by the caller."""

    def __call__(self, store: Store, net: Any, *, dataset: str, config: dict[str, Any],
                 epochs: int, loss: Any = None, targets: np.ndarray | None = None,
                 progress: Any = None, lr_scale: float | None = None) -> Any: ...


@dataclass(frozen=True)
class Kind:
    framework: str
    quantized: bool
    architecture: str


@dataclass
class Work:
    """What every pass may need: the store, the parent's dataset and training config."""

    store: Store
    dataset: Dataset
    config: dict[str, Any]  # the root's training config (for the loop: optimizer, batch)
    finetune: Finetune | None
    report: Report
    _train: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.dataset.name}@{self.dataset.version}"

    def train_rows(self) -> tuple[np.ndarray, np.ndarray]:
        if self._train is None:
            self._train = self.dataset.load("train")
        return self._train

    def tune(self, net: Any, epochs: int, what: str, **kw: Any) -> Any:
        if epochs == 0:
            return net
        if self.finetune is None:
            raise ConfigError(f"{what} needs the training loop",
                              hint="pass finetune=stratum.train.tune.finetune")
        self.report("stage", {"text": f"{what}: {epochs} epoch(s) of the training loop"})
        return self.finetune(self.store, net, dataset=self.ref, config=self.config,
                             epochs=epochs, progress=lambda p: self.report("train", {
                                 "step": p.step, "total": p.total_steps, "loss": p.loss}),
                             **kw)


@dataclass
class Child:
    spec: ModelSpec
    blob: bytes
    checks: dict[str, Any] = field(default_factory=dict)


def _torch_only(kind: Kind, what: str) -> None:
    if kind.framework != "torch":
        raise ConfigError(f"{what} needs a torch version; this one is {kind.framework}",
                          hint="prune or distill the torch version, then export or quantize")


@dataclass(frozen=True)
class Prune:
    sparsity: float
    structured: bool = False
    finetune_epochs: int = 1
    # Fine-tuning runs at a constant rate of the parent's peak rate times this, without
    # the parent's warm-up and schedule: a trained network restarted at the full rate
    # loses more than one epoch wins back (docs/compression.md).
    finetune_lr: float = 0.1

    @property
    def name(self) -> str:
        return "prune-structured" if self.structured else "prune"

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, kind: Kind) -> Kind:
        prn.check_sparsity(self.sparsity)
        _torch_only(kind, "pruning")
        if self.finetune_epochs < 0:
            raise ConfigError("finetune epochs must be >= 0")
        if not 0 < self.finetune_lr <= 1:
            raise ConfigError(f"the fine-tuning rate is a fraction of the parent's, in "
                              f"(0, 1]; got {self.finetune_lr}")
        if self.structured and kind.architecture not in ("mlp", "cnn"):
            raise ConfigError(f"structured pruning knows the zoo's mlp and cnn, not "
                              f"{kind.architecture!r}", hint="drop --structured")
        return kind

    def run(self, work: Work, parent: LoadedModel) -> Child:
        net = load_network(parent)
        spec = parent.spec
        if self.structured:
            state, widths = prn.structured(net, spec.architecture, self.sparsity)
            spec = spec.model_copy(update={"params": {**spec.params, **widths}})
            net = build_model(spec.architecture, spec.input_shape,
                              num_outputs(spec.task, spec.classes), **spec.params)
            net.load_state_dict(state)
            net = work.tune(net, self.finetune_epochs, "fine-tuning the pruned network",
                            lr_scale=self.finetune_lr)
            from safetensors.torch import save

            blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
            return Child(spec, blob, {"params_before": _count(load_network(parent)),
                                      "params_after": _count(net), **widths})
        prn.magnitude(net, self.sparsity)
        net = work.tune(net, self.finetune_epochs, "fine-tuning the pruned network",
                        lr_scale=self.finetune_lr)
        prn.make_permanent(net)
        return Child(spec, sparsify(net.state_dict()),
                     {"sparsity": round(prn.sparsity_of(net), 4), "format": "sparse"})


@dataclass(frozen=True)
class Quantize:
    mode: str = "dynamic"  # or "static"
    calibration: int = 200  # training samples (static)

    @property
    def name(self) -> str:
        return f"int8-{self.mode}"

    def params(self) -> dict[str, Any]:
        return asdict(self) if self.mode == "static" else {"mode": self.mode}

    def check(self, kind: Kind) -> Kind:
        if self.mode not in MODES:
            raise ConfigError(f"unknown quantization mode {self.mode!r}", hint="dynamic or static")
        if self.calibration < 1:
            raise ConfigError("static quantization needs at least 1 calibration sample")
        if kind.framework not in ("torch", "onnx") or kind.quantized:
            what = "an int8 graph" if kind.quantized else f"a {kind.framework} model"
            raise ConfigError(f"int8 quantization needs a float torch or ONNX version, not "
                              f"{what}")
        return Kind("onnx", True, kind.architecture)

    def run(self, work: Work, parent: LoadedModel) -> Child:
        checks: dict[str, Any] = {}
        if parent.spec.framework == "torch":
            x, _ = work.dataset.load("test")
            graph, diff = to_onnx(parent, x)
            checks["export_max_abs_diff"] = diff
        else:
            graph = parent.onnx_graph()
        calib = None
        if self.mode == "static":
            x, _ = work.train_rows()
            pick = np.random.default_rng(0).permutation(len(x))[:self.calibration]
            calib = x[np.sort(pick)]
            checks["calibration_rows"] = len(calib)
        work.report("stage", {"text": f"quantizing ({self.mode}) with ONNX Runtime"})
        return _onnx_child(parent.spec, quantize(graph, self.mode, calib), checks)


@dataclass(frozen=True)
class Export:
    @property
    def name(self) -> str:
        return "export-onnx"

    def params(self) -> dict[str, Any]:
        return {"format": "onnx"}

    def check(self, kind: Kind) -> Kind:
        _torch_only(kind, "ONNX export")
        return Kind("onnx", False, kind.architecture)

    def run(self, work: Work, parent: LoadedModel) -> Child:
        x, _ = work.dataset.load("test")
        graph, diff = to_onnx(parent, x)
        return _onnx_child(parent.spec, graph, {"max_abs_diff": diff})


@dataclass(frozen=True)
class Distill:
    student: str | None = None  # a zoo name; None: the parent's architecture, narrowed
    width: float = 0.5  # when student is None
    student_params: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None  # None: the parent's training epochs
    temperature: float = 4.0
    alpha: float = 0.7

    @property
    def name(self) -> str:
        return "distill"

    def params(self) -> dict[str, Any]:
        skip = ("width",) if self.student else ("student", "student_params")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def check(self, kind: Kind) -> Kind:
        dst.loss("classification", self.temperature, self.alpha)  # validates T and alpha
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError("a student needs at least 1 epoch")
        if self.student is None and kind.framework != "torch":
            raise ConfigError("a student narrowed from the parent needs a torch parent",
                              hint="name the student's architecture")
        return Kind("torch", False, self.student or kind.architecture)

    def student_spec(self, parent: ModelSpec) -> ModelSpec:
        if self.student is None:
            params = dst.student_params(parent.architecture, parent.params, self.width)
            return parent.model_copy(update={"params": params})
        return parent.model_copy(update={"framework": "torch", "architecture": self.student,
                                         "params": dict(self.student_params),
                                         "weights_file": "weights.safetensors"})

    def build(self, parent: ModelSpec) -> tuple[ModelSpec, Any]:
        """The student's spec and fresh network, dry-run on two rows of the input shape."""
        import torch

        spec = self.student_spec(parent)
        outputs = num_outputs(spec.task, spec.classes)
        net = build_model(spec.architecture, spec.input_shape, outputs, **spec.params)
        try:
            with torch.no_grad():
                out = net.eval()(torch.zeros(2, *spec.input_shape))
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(f"student {spec.architecture} {spec.params} does not accept "
                              f"the input shape {spec.input_shape}: "
                              f"{str(exc).splitlines()[0]}") from exc
        if tuple(out.shape) != (2, outputs):
            raise ConfigError(f"student {spec.architecture} returns {list(out.shape)} for 2 "
                              f"rows, expected [2, {outputs}]")
        return spec, net

    def run(self, work: Work, parent: LoadedModel) -> Child:
        import torch

        # The student's initial weights come from the run's seed, as a trained network's
        # do: the same call gives the same student, whatever ran before it in the process.
        with torch.random.fork_rng():
            torch.manual_seed(int(work.config.get("seed", 0)))
            spec, net = self.build(parent.spec)
        x, y = work.train_rows()
        teacher = load_predictor(parent)
        soft = dst.targets(teacher, x, y, spec.task)
        epochs = self.epochs or int(work.config.get("epochs", 5))
        config = {**work.config, "model": {"name": spec.architecture, "params": spec.params}}
        work.config, saved = config, work.config
        try:
            net = work.tune(net, epochs, f"training the student {spec.architecture} "
                            f"{spec.params}", targets=soft,
                            loss=dst.loss(spec.task, self.temperature, self.alpha))
        finally:
            work.config = saved
        from safetensors.torch import save

        blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
        return Child(spec, blob, {"student": spec.architecture, "student_params": spec.params,
                                  "epochs": epochs, "params_before": _param_count(parent),
                                  "params_after": _count(net)})


Pass = Prune | Quantize | Export | Distill


def _onnx_child(spec: ModelSpec, graph: bytes, checks: dict[str, Any]) -> Child:
    """An ONNX child, its graph deflated when that pays (a pruned network's zeros:
    ``stratum.store.sparse.pack_graph``)."""
    blob = pack_graph(graph)
    packed = is_packed_graph(blob)
    if packed:
        checks = {**checks, "format": "onnx+deflate", "graph_bytes": len(graph)}
    name = "model.onnx.z" if packed else "model.onnx"
    return Child(spec.model_copy(update={"framework": "onnx", "weights_file": name}), blob,
                 checks)


def _count(net: Any) -> int:
    return int(sum(p.numel() for p in net.parameters()))


def _param_count(loaded: LoadedModel) -> int | None:
    return _count(load_network(loaded)) if loaded.spec.framework == "torch" else None


__all__ = ["Child", "Distill", "Export", "Finetune", "Kind", "Pass", "Prune", "Quantize",
           "Work"]
