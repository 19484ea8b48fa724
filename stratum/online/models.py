"""Champion and challenger models behind one small interface, for every framework the
registry holds: score rows, fine-tune a copy, give the weights to register.

Torch models are fine-tuned incrementally: a few optimizer steps from the champion's
weights on mini-batches that mix recent feedback with a replay sample of the original
training data (against catastrophic forgetting). scikit-learn estimators use
``partial_fit`` where they have it, else they are refitted on replay + feedback.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from stratum.store import LoadedModel, ModelSpec
from stratum.train import sklearn as skl
from stratum.train.zoo import build_model


@dataclass(frozen=True)
class FineTune:
    steps: int
    learning_rate: float
    batch_size: int
    seed: int = 0


class OnlineModel(Protocol):
    spec: ModelSpec

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class indices (classification) or values (regression)."""
        ...

    def finetune(self, x: np.ndarray, y: np.ndarray, replay_x: np.ndarray,
                 replay_y: np.ndarray, how: FineTune) -> OnlineModel: ...

    def weights(self) -> dict[str, Any]:
        """``register_model`` keyword arguments for the weights."""
        ...


def correct(model: OnlineModel, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row: right class (classification) or within 10% of the spread (regression)."""
    if len(x) == 0:
        return np.zeros(0, bool)
    pred = model.predict(x)
    if model.spec.task == "classification":
        return np.asarray(pred == y, bool)
    spread = float(np.std(y)) or 1.0
    return np.asarray(np.abs(pred - y) <= 0.1 * spread, bool)


def score(model: OnlineModel, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or R² (regression): higher is better for both."""
    if len(x) == 0:
        return float("nan")
    if model.spec.task == "classification":
        return float(correct(model, x, y).mean())
    pred = model.predict(x)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2)) or 1.0
    return 1.0 - ss_res / ss_tot


class TorchModel:
    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        self.spec, self.net = spec, net.eval()

    @classmethod
    def load(cls, loaded: LoadedModel) -> TorchModel:
        spec = loaded.spec
        outputs = len(spec.classes or []) if spec.task == "classification" else 1
        net = build_model(spec.architecture, spec.input_shape, outputs, **spec.params)
        net.load_state_dict(loaded.torch_state_dict())
        return cls(spec, net)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = torch.cat([self.net(torch.from_numpy(np.ascontiguousarray(x[i:i + 512])))
                             for i in range(0, len(x), 512)])
        if self.spec.task == "classification":
            return out.argmax(1).numpy()
        return out.reshape(-1).numpy()

    def finetune(self, x: np.ndarray, y: np.ndarray, replay_x: np.ndarray,
                 replay_y: np.ndarray, how: FineTune) -> TorchModel:
        net = copy.deepcopy(self.net).train()
        opt = torch.optim.Adam(net.parameters(), lr=how.learning_rate)
        rng = np.random.default_rng(how.seed)
        classification = self.spec.task == "classification"
        # Half of every batch is feedback, half replay (all feedback if no replay).
        n_new = how.batch_size if len(replay_x) == 0 else max(1, how.batch_size // 2)
        for _ in range(how.steps):
            i = rng.integers(0, len(x), n_new)
            bx, by = x[i], y[i]
            if len(replay_x):
                j = rng.integers(0, len(replay_x), how.batch_size - n_new)
                bx, by = np.concatenate([bx, replay_x[j]]), np.concatenate([by, replay_y[j]])
            out = net(torch.from_numpy(bx))
            target = torch.from_numpy(by)
            loss = (nn.functional.cross_entropy(out, target) if classification
                    else nn.functional.mse_loss(out.reshape(-1), target.float()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return TorchModel(self.spec, net.eval())

    def weights(self) -> dict[str, Any]:
        return {"weights": self.net.state_dict()}


class SklearnModel:
    def __init__(self, spec: ModelSpec, est: Any) -> None:
        self.spec, self.est = spec, est

    @classmethod
    def load(cls, loaded: LoadedModel) -> SklearnModel:
        return cls(loaded.spec, skl.loads(loaded.weights_blob))

    def predict(self, x: np.ndarray) -> np.ndarray:
        pred = np.asarray(self.est.predict(skl.flat(x)))
        return pred.astype(np.int64) if self.spec.task == "classification" else pred

    def finetune(self, x: np.ndarray, y: np.ndarray, replay_x: np.ndarray,
                 replay_y: np.ndarray, how: FineTune) -> SklearnModel:
        est = copy.deepcopy(self.est)
        if hasattr(est, "partial_fit"):
            for _ in range(max(1, how.steps // 10)):
                est.partial_fit(skl.flat(x), y)
        else:  # periodic retraining on what has been seen, replay included
            xs = np.concatenate([replay_x, x]) if len(replay_x) else x
            ys = np.concatenate([replay_y, y]) if len(replay_y) else y
            skl.fit_estimator(est, xs, ys)
        return SklearnModel(self.spec, est)

    def weights(self) -> dict[str, Any]:
        return {"weights_blob": skl.dumps(self.est)}


def load_online_model(loaded: LoadedModel) -> OnlineModel:
    if loaded.spec.framework == "sklearn":
        return SklearnModel.load(loaded)
    if loaded.spec.framework == "torch":
        return TorchModel.load(loaded)
    from stratum.errors import ConfigError

    raise ConfigError(f"{loaded.name} v{loaded.version} is a {loaded.spec.framework} model; "
                      "online learning needs its torch or scikit-learn source version")
