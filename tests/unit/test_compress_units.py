"""The pieces of compression without data: the sparse weights format, structured pruning,
the distillation loss, the gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_np
from safetensors.torch import save

from stratum.compress import Distill
from stratum.compress import distill as dst
from stratum.compress import prune as prn
from stratum.compress.gate import judge
from stratum.errors import ConfigError, IntegrityError
from stratum.models import build_model
from stratum.store import LoadedModel, ModelSpec, sparse


def _pruned_state(sparsity: float = 0.8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = build_model("mlp", [64], 10, hidden=[128, 64])
    prn.magnitude(net, sparsity)
    prn.make_permanent(net)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_sparse_weights_round_trip_and_shrink() -> None:
    state = _pruned_state(0.8)
    blob = sparse.sparsify(state)
    dense = save({k: v.contiguous() for k, v in state.items()})
    assert sparse.is_sparse(blob) and not sparse.is_sparse(dense)
    assert len(blob) <= 0.3 * len(dense), (len(blob), len(dense))
    back = sparse.densify(blob)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # the registry's loader densifies: every consumer gets a dense state dict
    spec = ModelSpec(architecture="mlp", params={"hidden": [128, 64]}, input_shape=[64],
                     classes=list(range(10)))
    loaded = LoadedModel(name="m", version=1, spec=spec, weights_blob=blob)
    assert torch.equal(loaded.torch_state_dict()["1.weight"], state["1.weight"])


def test_damaged_sparse_weights_are_refused() -> None:
    blob = sparse.sparsify({"w": torch.zeros(100, 10).index_fill_(0, torch.tensor([3]), 1.0)})
    tensors = {k: torch.from_numpy(v.copy()) for k, v in load_np(blob).items()}
    tensors["w::values"] = tensors["w::values"][:-1]  # one value short of the mask
    meta = sparse.header_metadata(blob)
    broken = save(tensors, metadata=meta)
    with pytest.raises(IntegrityError, match="disagree"):
        sparse.densify(broken)


def test_structured_pruning_removes_dead_units_without_changing_outputs() -> None:
    torch.manual_seed(0)
    net = build_model("mlp", [8], 3, hidden=[6], dropout=0.0).eval()
    first = net.get_submodule("1")
    assert isinstance(first, torch.nn.Linear)
    with torch.no_grad():  # units 1, 3, 5 are dead: no weights in, no bias
        first.weight[[1, 3, 5]] = 0.0
        first.bias[[1, 3, 5]] = 0.0
    state, widths = prn.structured(net, "mlp", 0.5)
    assert widths == {"hidden": [3]}
    small = build_model("mlp", [8], 3, hidden=[3], dropout=0.0).eval()
    small.load_state_dict(state)
    x = torch.randn(16, 8)
    assert torch.allclose(small(x), net(x), atol=1e-6)


def test_structured_pruning_of_a_cnn_rebuilds_a_narrower_cnn() -> None:
    net = build_model("cnn", [1, 28, 28], 10)
    state, widths = prn.structured(net, "cnn", 0.5)
    assert widths == {"channels": [16, 32], "hidden": 64}
    small = build_model("cnn", [1, 28, 28], 10, **widths)
    small.load_state_dict(state)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="structured"):
        prn.structured(build_model("resnet", [1, 8, 8], 3), "resnet", 0.5)


def test_distillation_loss_and_student_checks() -> None:
    out, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    teacher = torch.randn(8, 4)
    rows = torch.cat([y[:, None].float(), teacher], 1)
    hard = dst.loss("classification", 2.0, 0.0)
    assert torch.allclose(hard(out, rows), torch.nn.functional.cross_entropy(out, y))
    assert torch.allclose(hard(out, y), torch.nn.functional.cross_entropy(out, y))
    soft = dst.loss("classification", 2.0, 1.0)
    assert float(soft(teacher, rows)) == pytest.approx(0.0, abs=1e-5)  # student == teacher
    assert dst.student_params("cnn", {}, 0.5) == {"channels": [16, 32], "hidden": 64}
    tabular = ModelSpec(architecture="mlp", input_shape=[64], classes=[0, 1])
    with pytest.raises(ConfigError, match="image"):  # a student that does not fit the input
        Distill("cnn").build(tabular)


def test_gate() -> None:
    assert judge(0.97, 0.965, 1.0).passed
    refused = judge(0.97, 0.95, 1.0)
    assert not refused.passed and refused.drop_points == pytest.approx(2.0)
    assert judge(0.97, 0.5, None).passed  # no gate asked for
    assert np.isclose(judge(0.9, 0.95, 0.0).drop_points, -5.0)
