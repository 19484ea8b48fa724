"""The pieces of compression without data: the sparse weights format, packed ONNX graphs,
structured pruning, the distillation loss, which convs static int8 keeps float, the
fine-tuning rate, the gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load as load_np
from safetensors.torch import save

from stratum.compress import Distill, Prune, quantize
from stratum.compress import distill as dst
from stratum.compress import prune as prn
from stratum.compress.gate import judge
from stratum.compress.passes import Kind
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


def test_onnx_graphs_are_packed_when_deflate_pays_and_unpacked_at_load() -> None:
    mostly_zeros = bytes(8) * 50_000 + np.random.default_rng(0).bytes(20_000)
    packed = sparse.pack_graph(mostly_zeros)
    assert sparse.is_packed_graph(packed) and len(packed) < 0.3 * len(mostly_zeros)
    assert sparse.unpack_graph(packed) == mostly_zeros
    noise = np.random.default_rng(1).bytes(50_000)  # a dense float graph barely deflates
    assert sparse.pack_graph(noise) == noise and sparse.unpack_graph(noise) == noise
    spec = ModelSpec(framework="onnx", architecture="cnn", input_shape=[1, 8, 8],
                     weights_file="model.onnx.z")
    loaded = LoadedModel(name="m", version=1, spec=spec, weights_blob=packed)
    assert loaded.onnx_graph() == mostly_zeros
    for broken in (packed[:-10], packed[:len(sparse.GRAPH_MAGIC) + 4],
                   packed[:len(sparse.GRAPH_MAGIC)] + (2**40).to_bytes(8, "little")):
        with pytest.raises(IntegrityError, match="packed ONNX"):
            sparse.unpack_graph(broken)


def test_static_int8_keeps_shallow_convs_float() -> None:
    from onnx import TensorProto, helper, numpy_helper

    def conv(name: str, x: str, w: tuple[int, ...]) -> tuple[object, object]:
        init = numpy_helper.from_array(np.zeros(w, dtype=np.float32), f"{name}.w")
        return helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.y"], name=name), init

    first, w1 = conv("first", "x", (32, 1, 3, 3))  # 9 products an output: shallow
    rgb, w2 = conv("rgb", "first.y", (16, 32, 1, 1))  # 32: deep enough
    graph = helper.make_graph(
        [first, rgb], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("rgb.y", TensorProto.FLOAT, None)], [w1, w2])
    assert quantize.shallow_convs(helper.make_model(graph).SerializeToString()) == ["first"]


def test_finetuning_runs_at_a_constant_fraction_of_the_parents_rate() -> None:
    from stratum.train.tune import tune_config

    parent = {"dataset": "mnist@latest", "model": {"name": "cnn"}, "epochs": 8,
              "optimizer": {"name": "adam", "lr": 0.003},
              "schedule": {"name": "cosine", "warmup_steps": 100}}
    cfg = tune_config(parent, "mnist@abc", 1, lr_scale=0.1)
    assert cfg.epochs == 1 and cfg.optimizer.lr == pytest.approx(0.0003)
    assert cfg.schedule.name == "none" and cfg.schedule.warmup_steps == 0
    student = tune_config(parent, "mnist@abc", 8)  # trained from scratch: the parent's
    assert student.optimizer.lr == 0.003 and student.schedule.name == "cosine"
    with pytest.raises(ConfigError, match="fine-tuning rate"):
        Prune(0.8, finetune_lr=0.0).check(Kind("torch", False, "cnn"))
