"""PyTorch: rebuild the zoo network, load safetensors weights, infer under inference_mode."""

from __future__ import annotations

import numpy as np
import torch

from stratum.errors import IntegrityError
from stratum.serve.runtime import num_outputs
from stratum.store import LoadedModel
from stratum.train.zoo import build_model


class TorchRuntime:
    framework = "torch"

    def __init__(self, loaded: LoadedModel, *, compile: bool = False) -> None:
        spec = loaded.spec
        net = build_model(spec.architecture, spec.input_shape, num_outputs(loaded), **spec.params)
        try:
            net.load_state_dict(loaded.torch_state_dict())
        except (RuntimeError, KeyError) as exc:
            raise IntegrityError(
                f"model {loaded.name} v{loaded.version}: weights do not fit "
                f"{spec.architecture} {spec.params}: {exc}"
            ) from exc
        net.eval()
        self._classify = spec.task == "classification"
        # compile pays off for bigger nets; it costs seconds of start-up, hence opt-in.
        self._net = torch.compile(net, dynamic=True) if compile else net

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not x.flags.writeable:  # a binary OIP tensor is a view of the request bytes
            x = x.copy()
        with torch.inference_mode():
            out = self._net(torch.from_numpy(x))
            out = torch.softmax(out, dim=1) if self._classify else out.reshape(-1)
            return out.numpy()
