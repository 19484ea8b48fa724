"""PyTorch: rebuild the zoo network, load safetensors weights, infer under inference_mode.

Convolutional networks are served in the channels-last (NHWC) memory layout: oneDNN's CPU
convolutions and pooling run 2-3x faster on it than on the NCHW layout a network trains
in, and the results are the same to float rounding (``bench/serve.py`` prints both
forward passes; ``tests/unit/test_serve_runtime.py`` checks they agree).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stratum.errors import IntegrityError
from stratum.serve.runtime import num_outputs
from stratum.store import LoadedModel
from stratum.train.zoo import build_model


class TorchRuntime:
    framework = "torch"

    def __init__(self, loaded: LoadedModel, *, compile: bool = False,
                 channels_last: bool = True) -> None:
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
        self.channels_last = channels_last and uses_conv2d(net, spec.input_shape)
        if self.channels_last:
            # Documented, but missing from the overloads torch declares for Module.to.
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        # compile pays off for bigger nets; it costs seconds of start-up, hence opt-in.
        self._net = torch.compile(net, dynamic=True) if compile else net

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not x.flags.writeable:  # a binary OIP tensor is a view of the request bytes
            x = x.copy()
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.channels_last:
                t = t.contiguous(memory_format=torch.channels_last)
            out = self._net(t)
            out = torch.softmax(out, dim=1) if self._classify else out.reshape(-1)
            return out.numpy()


def uses_conv2d(net: nn.Module, input_shape: list[int]) -> bool:
    """Whether ``net`` takes images (C, H, W) through 2-d convolutions: the layout matters."""
    return len(input_shape) == 3 and any(isinstance(m, nn.Conv2d) for m in net.modules())
