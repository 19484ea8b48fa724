"""Input validation against the model signature: what passes, and the 4xx for what not."""

from __future__ import annotations

import numpy as np
import pytest

from stratum.data.signature import Signature
from stratum.errors import BadRequestError, SignatureError
from stratum.store import ModelSpec

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def tabular() -> Signature:
    return Signature.from_spec(ModelSpec(architecture="mlp", input_shape=[4],
                                         feature_names=FEATURES, classes=[0, 1, 2]))


def image() -> Signature:
    return Signature.from_spec(ModelSpec(architecture="cnn", input_shape=[1, 8, 8],
                                         classes=list(range(10))))


def test_tabular_lists_and_named_objects_give_the_same_batch() -> None:
    sig = tabular()
    rows = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
    a = sig.from_instances(rows)
    b = sig.from_instances([dict(zip(reversed(FEATURES), reversed(r), strict=True))
                            for r in rows])
    assert a.dtype == np.float32 and a.shape == (2, 4)
    np.testing.assert_array_equal(a, b)


def test_image_accepts_nested_flat_and_hxw() -> None:
    sig = image()
    px = np.arange(64, dtype=np.float32)
    for sample in (px.reshape(1, 8, 8).tolist(), px.tolist(), px.reshape(8, 8).tolist()):
        out = sig.from_instances([sample])
        assert out.shape == (1, 1, 8, 8)
        np.testing.assert_array_equal(out.reshape(-1), px)


@pytest.mark.parametrize(
    ("instances", "error", "words"),
    [
        ([[1.0, 2.0, 3.0]], SignatureError, ["[3]", "[4]", "sepal_length"]),
        ([[1.0, 2.0], [1.0, 2.0, 3.0, 4.0]], SignatureError, ["ragged"]),
        ([["a", "b", "c", "d"]], SignatureError, ["str", "numbers"]),
        ([[1.0, None, 3.0, 4.0]], SignatureError, ["null"]),
        ([{"sepal_length": 1.0}], SignatureError, ["missing", "petal_width"]),
        ([{**dict.fromkeys(FEATURES, 1.0), "colour": 2.0}], SignatureError, ["unknown", "colour"]),
        ([], BadRequestError, ["non-empty"]),
        ("nope", BadRequestError, ["list"]),
        ([{"sepal_length": 1.0}, [1, 2, 3, 4]], BadRequestError, ["mixes"]),
    ],
)
def test_mismatches_say_what_is_wrong(instances: object, error: type[Exception],
                                      words: list[str]) -> None:
    with pytest.raises(error) as info:
        tabular().from_instances(instances)
    for w in words:
        assert w in str(info.value)


def test_wrong_image_shape_lists_the_accepted_shapes() -> None:
    with pytest.raises(SignatureError, match=r"\[1, 8, 8\].*\[64\].*\[8, 8\]"):
        image().from_array(np.zeros((2, 7, 7)), "input")


def test_named_features_on_an_unnamed_model_is_a_clear_error() -> None:
    with pytest.raises(SignatureError, match="unnamed tensors"):
        image().from_columns({"a": [1.0]})


class _Scale:
    """A stand-in pipeline with the contract's two methods: doubles the raw features."""

    def transform(self, columns: dict[str, list[float]]) -> np.ndarray:
        return self.transform_matrix(np.column_stack([columns[f] for f in FEATURES]))

    def transform_matrix(self, X: np.ndarray) -> np.ndarray:
        if np.asarray(X).dtype.kind not in "fiu":
            raise ValueError("column sepal_width is not numeric")
        return np.asarray(X, dtype=np.float32) * 2


def test_preprocessing_runs_on_lists_and_named_features() -> None:
    spec = ModelSpec(architecture="mlp", input_shape=[4], feature_names=FEATURES, classes=[0, 1])
    sig = Signature.from_spec(spec, _Scale())
    np.testing.assert_array_equal(sig.from_instances([[1, 2, 3, 4]]), [[2, 4, 6, 8]])
    np.testing.assert_array_equal(
        sig.from_instances([dict(zip(FEATURES, [1, 2, 3, 4], strict=True))]), [[2, 4, 6, 8]])
    with pytest.raises(SignatureError, match="preprocessing rejected"):
        sig.from_columns({f: ["x"] for f in FEATURES})


@pytest.mark.parametrize(
    ("instances", "words"),
    [  # 1e40 is a fine float64 and an infinite FP32: the cast would feed the model inf
        ([[5.1, 3.5, 1.4, 0.2], [1.0, 1e40, 1.0, 1.0]], ["instance(s) [1]", "'sepal_width'"]),
        ([dict.fromkeys(FEATURES, -1e39)], ["instance(s) [0]", "'petal_width'", "FP32"]),
    ],
)
def test_inputs_beyond_fp32_are_a_422_naming_instance_and_feature(
    instances: object, words: list[str],
) -> None:
    with pytest.raises(SignatureError) as info:
        tabular().from_instances(instances)
    for w in words:
        assert w in str(info.value)


def test_nan_and_infinity_in_a_tensor_are_refused_by_row_and_feature() -> None:
    x = np.ones((3, 4), np.float32)
    x[0, 1], x[2, 3] = np.nan, np.inf
    with pytest.raises(SignatureError, match=r"instance\(s\) \[0, 2\].*'sepal_width', "
                                             r"'petal_width'"):
        tabular().from_array(x, "input 'input'")
    with pytest.raises(SignatureError, match=r"instance\(s\) \[1\]"):
        image().from_array(np.stack([np.zeros(64), np.full(64, np.inf)]), "input")
    assert tabular().from_array(np.full((1, 4), 3e38), "input").dtype == np.float32


def test_with_a_pipeline_a_missing_value_is_imputed_but_an_overflow_is_named() -> None:
    class _Impute(_Scale):
        def transform_matrix(self, X: np.ndarray) -> np.ndarray:
            return np.nan_to_num(np.asarray(X, dtype=np.float64), nan=0.0) * 2

    spec = ModelSpec(architecture="mlp", input_shape=[4], feature_names=FEATURES, classes=[0, 1])
    sig = Signature.from_spec(spec, _Impute())
    np.testing.assert_array_equal(sig.from_array(np.array([[1, np.nan, 3, 4]]), "input"),
                                  [[2, 0, 6, 8]])
    with pytest.raises(SignatureError, match=r"instance\(s\) \[0\], feature\(s\) "
                                             r"\['petal_length'\]"):
        sig.from_columns({f: [1e39 if f == "petal_length" else 1.0] for f in FEATURES})
