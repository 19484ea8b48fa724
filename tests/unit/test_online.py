"""Online-learning units: the promotion gate, feedback parsing and checks, input capture."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stratum.errors import BadRequestError, NotFoundError, SignatureError
from stratum.online.gate import decide
from stratum.online.record import Challenger, keep
from stratum.queue import open_queue
from stratum.serve.capture import InputCapture
from stratum.serve.feedback import FeedbackIntake, FeedbackItem, check_labels, parse_feedback
from stratum.store import Store
from stratum.store.requests import LoggedRequest, RequestLog


def test_gate_promotes_a_clear_win_that_keeps_the_holdout() -> None:
    champ = np.array([True] * 50 + [False] * 50)
    chall = np.array([True] * 90 + [False] * 10)
    d = decide(champ, chall, champion_holdout=0.97, challenger_holdout=0.965)
    assert d.promote and d.wins == 40 and d.losses == 0 and d.recent_gain == pytest.approx(0.4)


def test_gate_refuses_a_win_paid_for_on_the_holdout() -> None:
    champ = np.array([True] * 50 + [False] * 50)
    chall = np.ones(100, bool)
    d = decide(champ, chall, champion_holdout=0.97, challenger_holdout=0.90, tolerance=0.01)
    assert not d.promote and "worse on the holdout" in d.reason


def test_gate_refuses_too_few_rows_and_a_tie() -> None:
    assert not decide(np.zeros(5, bool), np.ones(5, bool), champion_holdout=0.9,
                      challenger_holdout=0.9).promote
    same = np.array([True, False] * 50)
    d = decide(same, same, champion_holdout=0.9, challenger_holdout=0.95)
    assert not d.promote and d.z == 0.0


def test_gate_refuses_shuffled_label_challengers_at_the_nominal_rate() -> None:
    """Two models each right at random on the same rows (a challenger fitted to shuffled
    labels) are indistinguishable: the paired test promotes at most ~5% of them — and
    the holdout check stops those (see the integration test)."""
    rng = np.random.default_rng(0)
    promoted = sum(decide(rng.random(400) < 0.1, rng.random(400) < 0.1,
                          champion_holdout=0.97, challenger_holdout=0.97).promote
                   for _ in range(2000))
    assert promoted / 2000 < 0.06  # one-sided 5% test


def test_parse_feedback_one_or_many_and_errors() -> None:
    assert parse_feedback(b'[{"request_id": "a", "label": 1}, {"request_id": "b", '
                          b'"label": [2, 3]}]') == [FeedbackItem("a", 1),
                                                    FeedbackItem("b", [2, 3])]
    for body, msg in [(b"{", "not valid JSON"), (b"[]", "at least one"),
                      (b'{"label": 1}', "request_id"), (b'{"request_id": "a"}', "label"),
                      (b'[1]', "must be an object"),
                      (b'{"request_id": "' + b"x" * 65 + b'", "label": 1}', "1-64")]:
        with pytest.raises(BadRequestError, match=msg):
            parse_feedback(body)


def _logged(inputs: Any, model: str = "m") -> LoggedRequest:
    from stratum.store.models import utcnow

    return LoggedRequest("r1", model, 1, inputs, {"classes": [0]}, utcnow())


def test_labels_must_fit_the_instances_and_the_classes() -> None:
    two = _logged([[1, 2], [3, 4]])
    assert check_labels(FeedbackItem("r1", [0, 1]), two, [0, 1]) == [0, 1]
    with pytest.raises(SignatureError, match="2 instance"):
        check_labels(FeedbackItem("r1", 0), two, [0, 1])
    with pytest.raises(SignatureError, match="not classes"):
        check_labels(FeedbackItem("r1", [0, 7]), two, [0, 1])
    with pytest.raises(SignatureError, match="regressor"):
        check_labels(FeedbackItem("r1", ["a", 1.0]), two, None)


def test_intake_enqueues_once_and_404s_unknown_ids(store: Store, tmp_path: Any) -> None:
    log = RequestLog(store.meta)
    capture = InputCapture(log, "m")
    capture.add("r1", 1, [[0.5, 0.5]], {"classes": ["a"]})
    assert capture.buffered == 1 and capture.flush() == 1 and capture.buffered == 0
    queue = open_queue(f"sqlite:///{tmp_path / 'q.db'}", "feedback-m")
    intake = FeedbackIntake("m", log, queue, ["a", "b"])
    items = [FeedbackItem("r1", "b")]
    assert intake.submit(items, intake.lookup(items)).to_dict() == {"accepted": 1,
                                                                    "duplicates": 0}
    assert intake.submit(items, intake.lookup(items)).to_dict() == {"accepted": 0,
                                                                    "duplicates": 1}
    assert queue.size() == 1
    (msg,) = queue.get(10)
    assert msg.payload["labels"] == ["b"] and msg.payload["request_id"] == "r1"
    unknown = [FeedbackItem("nope", "a")]
    with pytest.raises(NotFoundError, match="no logged request 'nope'"):
        intake.submit(unknown, intake.lookup(unknown))
    other = FeedbackIntake("other-model", log, queue, ["a", "b"])
    with pytest.raises(NotFoundError, match="served by m"):
        other.submit(items, other.lookup(items))
    queue.close()


def test_capture_respects_sampling(store: Store) -> None:
    capture = InputCapture(RequestLog(store.meta, sample_rate=0.0), "m")
    capture.add("r1", 1, [[1.0]], None)
    assert capture.buffered == 0 and capture.flush() == 0


def _challenger(store: Store) -> Challenger:
    import torch

    from stratum.models import build_model
    from stratum.store import ModelSpec, register_model

    torch.manual_seed(0)
    net = build_model("mlp", [4], 3, hidden=[8])
    spec = ModelSpec(architecture="mlp", params={"hidden": [8]}, input_shape=[4],
                     classes=[0, 1, 2])
    champ = register_model(store.meta, store.artifacts, "m", spec, weights=net.state_dict())
    return Challenger("m", spec, champ.version, {"weights": net.state_dict()}, None, None,
                      {"trigger": "batch", "feedback_rows": 40})


@pytest.mark.parametrize("promote", [False, True])
def test_every_challenger_is_a_run_and_only_a_winner_a_version(store: Store,
                                                               promote: bool) -> None:
    c = _challenger(store)
    wins = np.array([False] * 10 + [True] * 40)
    # The challenger gets 40 more rows right; promoted only if it keeps the holdout too.
    d = decide(np.zeros(50, bool), wins, champion_holdout=0.9,
               challenger_holdout=0.95 if promote else 0.5)
    assert d.promote is promote
    kept = keep(store, c, d)
    versions = [mv.version for mv in store.meta.model_versions("m")]
    run = store.meta.run(kept.run_id)
    assert run.strategy == "online" and run.status == "completed"
    assert run.config == {"parent_version": 1, "trigger": "batch", "feedback_rows": 40}
    assert run.summary["outcome"] == ("promoted" if promote else "rejected")
    assert run.summary["decision"]["promote"] is promote
    assert {m.key: m.value for m in store.meta.metrics(kept.run_id)}["holdout_accuracy"] \
        == pytest.approx(d.challenger_holdout)
    if promote:
        assert kept.version == 2 and versions == [1, 2]
        mv = store.meta.model_version("m", 2)
        assert mv.run_id == kept.run_id and run.summary["version"] == 2
    else:  # a rejected challenger stays a run record, not a version
        assert kept.version is None and versions == [1] and run.summary["version"] is None


def test_register_rejected_keeps_the_old_behaviour(store: Store) -> None:
    c = _challenger(store)
    d = decide(np.ones(50, bool), np.zeros(50, bool), champion_holdout=0.9,
               challenger_holdout=0.5)
    kept = keep(store, c, d, register_rejected=True)
    assert not d.promote and kept.version == 2
    assert store.meta.aliases("m")["candidate"] == 2
    assert store.meta.run(kept.run_id).summary["outcome"] == "rejected"
    # `stratum train --resume` never picks a learner's run as a training run to continue
    assert store.meta.runs("m", exclude_strategies=("online",)) == []
