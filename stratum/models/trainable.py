"""A registered version as a model that can learn more: predict, fine-tune a copy, give the
weights to register — one small interface over every trainable framework (as River has one
``learn_one`` / ``predict_one`` across model families). The online learner's champion and
challenger are these.

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

from stratum.models import estimators as skl
from stratum.models.zoo import load_network
from stratum.store import LoadedModel, ModelSpec


@dataclass(frozen=True)
class FineTune:
    steps: int
    learning_rate: float
    batch_size: int
    seed: int = 0


class Trainable(Protocol):
    spec: ModelSpec

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class indices (classification) or values (regression)."""
        ...

    def finetune(self, x: np.ndarray, y: np.ndarray, replay_x: np.ndarray,
                 replay_y: np.ndarray, how: FineTune) -> Trainable: ...

    def weights(self) -> dict[str, Any]:
        """``register_model`` keyword arguments for the weights."""
        ...


class TorchModel:
    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        self.spec, self.net = spec, net.eval()

    @classmethod
    def load(cls, loaded: LoadedModel) -> TorchModel:
        return cls(loaded.spec, load_network(loaded))

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
        return cls(loaded.spec, skl.loads(loaded.weights_blob,
                                          f"model {loaded.name} v{loaded.version}"))

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


__all__ = ["FineTune", "SklearnModel", "TorchModel", "Trainable"]
