"""The `gain` policy: its decision table, the model check, the gain table's fit, and refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clinie.brat import Document, GoldRelation, GoldSpan, document_from_result
from clinie.schema import EntitySpan, ModifierSpan, NoteResult, Relation, Route
from clinie.scoring import score_documents
from router import CostModel, LoadState, NoteSignals, PolicyConfigError, Router, parse_router_config
from router.calibrate import (
    bucket_of,
    f1_from_counts,
    fit_gain_table,
    gain_buckets,
    gain_policy_spec,
    sentence_gains,
)
from router.policies.gain import METRICS, Gain
from router.simulate import F1_KEYS, score_counts, sentence_deltas

COSTS = {"llm_cost_per_token": 1.0, "chars_per_token": 4.0, "llm_tokens_per_sentence": 100.0}
FAST = "clinie-fast@a9bed267db"
LLM = "smollm2-135m-instruct-v2"
# min_token_prob below 0.3: the LLM gains 0.5; 0.3..0.6: it loses 0.2; above: it loses 0.1
TABLE = [
    {"upper": 0.3, "gain": 0.5, "se": 0.1, "sentences": 100},
    {"upper": 0.6, "gain": -0.2, "se": 0.05, "sentences": 100},
    {"upper": None, "gain": -0.1, "se": 0.01, "sentences": 300},
]


def signals(min_prob: list[float], chars: int = 40) -> NoteSignals:
    ranges = [(i * (chars + 1), i * (chars + 1) + chars) for i in range(len(min_prob))]
    return NoteSignals(
        sentences=ranges,
        sentence_chars=[chars] * len(min_prob),
        per_sentence={"min_token_prob": np.array(min_prob, np.float64)},
        note={"min_token_prob": min(min_prob)},
    )


def gain_spec(buckets: list[dict] | None = None, **kw) -> dict:
    return {"kind": "gain", "signal": "min_token_prob", "buckets": TABLE if buckets is None else buckets, **kw}


def config(spec: dict | None = None, calibrated_for: dict | str | None = "default", **extra) -> dict:
    raw = {
        "default_policy": "g",
        "costs": COSTS,
        "policies": {
            "g": spec or gain_spec(),
            "calibrated": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5},
            "default": {"kind": "budget", "inner": "g", "rate_per_minute": 0, "burst": 1e9},
        },
        **extra,
    }
    if calibrated_for == "default":
        raw["calibrated_for"] = {"fast": FAST, "llm": LLM}
    elif calibrated_for is not None:
        raw["calibrated_for"] = calibrated_for
    return raw


def router(spec: dict | None = None, running: tuple[str | None, str | None] = (FAST, LLM), **kw) -> Router:
    r = Router(parse_router_config(config(spec, **kw)))
    r.set_running_models(fast=running[0], llm=running[1])
    return r


def sentence_cost(chars: int = 40) -> float:
    return CostModel(**COSTS).llm_tokens([chars])  # 100 + 3 * 40 / 4 = 130


# --- decision table ------------------------------------------------------------------------------


def test_escalates_only_the_sentences_in_a_gaining_bucket():
    d = router().decide(signals([0.1, 0.5, 0.9, 0.2]))
    assert d.action == "sentences" and d.sentences == [0, 3]
    assert d.reason == "expected_gain"
    assert d.llm_tokens == pytest.approx(2 * sentence_cost())


def test_bucket_bounds_are_exclusive_above():
    r = router()
    policy = r.policies["g"]
    assert isinstance(policy, Gain)
    # 0.5 - 1 * 0.1 = 0.4 below 0.3; exactly 0.3 belongs to the next bucket
    assert policy.bucket_gain(0.2999) == pytest.approx(0.4)
    assert policy.bucket_gain(0.3) == pytest.approx(-0.25)
    assert policy.bucket_gain(0.6) == pytest.approx(-0.11)
    assert r.decide(signals([0.3])).reason == "confident"


def test_all_sentences_gaining_sends_the_whole_note():
    d = router().decide(signals([0.1, 0.2]))
    assert d.action == "note" and d.reason == "expected_gain"


@pytest.mark.parametrize(
    ("price", "action", "reason"),
    [
        (0.0, "sentences", "expected_gain"),
        (0.39 / 130, "sentences", "expected_gain"),  # gain 0.4 per 130 tokens: just above the price
        (0.41 / 130, "fast", "below_price"),  # just below
        (1.0, "fast", "below_price"),
    ],
)
def test_price_per_cost(price, action, reason):
    d = router(gain_spec(min_gain_per_cost=price)).decide(signals([0.1, 0.9]))
    assert (d.action, d.reason) == (action, reason)


def test_price_scales_with_the_cost_per_token():
    spec = gain_spec(min_gain_per_cost=0.2 / 130)  # 0.4 gain > 0.2 at 1 cost unit per token ...
    assert router(spec).decide(signals([0.1, 0.9])).escalates
    raw = config(spec)
    raw["costs"] = {**COSTS, "llm_cost_per_token": 3.0}  # ... but not at 3
    r = Router(parse_router_config(raw))
    r.set_running_models(fast=FAST, llm=LLM)
    assert r.decide(signals([0.1, 0.9])).reason == "below_price"


def test_margin_se_makes_a_noisy_gain_not_count():
    noisy = [{"upper": 0.3, "gain": 0.05, "se": 0.1, "sentences": 20}, {"upper": None, "gain": -0.1, "se": 0.0}]
    assert router(gain_spec(noisy)).decide(signals([0.1])).reason == "llm_not_better"
    assert router(gain_spec(noisy, margin_se=0.0)).decide(signals([0.1, 0.9])).sentences == [0]


def test_no_bucket_gaining_means_llm_not_better_for_every_note():
    losing = [{"upper": 0.5, "gain": -0.3, "se": 0.1}, {"upper": None, "gain": -0.01, "se": 0.0}]
    r = router(gain_spec(losing, margin_se=0.0))
    for sig in (signals([0.01, 0.02]), signals([0.99]), signals([0.4, 0.7])):
        assert r.decide(sig) == r.decide(sig).model_copy(update={"action": "fast"})
        assert r.decide(sig).reason == "llm_not_better"
    # a zero gain is no gain
    assert router(gain_spec([{"upper": None, "gain": 0.0}])).decide(signals([0.1])).reason == "llm_not_better"


def test_confident_when_this_note_is_not_in_a_gaining_bucket():
    assert router().decide(signals([0.5, 0.9])).reason == "confident"


@pytest.mark.parametrize(
    ("p50", "headroom", "deadline", "expected"),
    [
        (None, 1.0, 100.0, "expected_gain"),  # latency not measured yet: nothing to refuse on
        (500.0, 1.0, None, "expected_gain"),  # no deadline
        (500.0, 1.0, 600.0, "expected_gain"),  # fits
        (500.0, 1.0, 500.0, "expected_gain"),  # exactly fits
        (500.0, 1.5, 600.0, "deadline"),  # 750 ms expected
        (700.0, 1.0, 600.0, "deadline"),
    ],
)
def test_deadline(p50, headroom, deadline, expected):
    r = router(load={"latency_headroom": headroom})
    d = r.decide(signals([0.1, 0.9]), load=LoadState(llm_p50_ms=p50), deadline_ms=deadline)
    assert d.reason == expected
    assert d.escalates == (expected == "expected_gain")


def test_deadline_is_only_checked_when_there_is_something_to_escalate():
    r = router()
    d = r.decide(signals([0.9]), load=LoadState(llm_p50_ms=1e6), deadline_ms=1.0)
    assert d.reason == "confident"


def test_overload_guard_still_applies():
    r = router(load={"max_llm_queue": 2})
    assert r.decide(signals([0.1, 0.9]), load=LoadState(llm_in_flight=2)).reason == "llm_overloaded"
    assert r.decide(signals([0.1, 0.9]), load=LoadState(llm_available=False)).reason == "llm_tier_unavailable"


@pytest.mark.parametrize(
    "running",
    [
        ("clinie-fast@0123456789", LLM),  # another fast tier
        (FAST, "Meta-Llama-3-70B-Instruct"),  # another LLM
        (FAST, LLM + "+lora:my-adapter"),  # same LLM with an adapter it was not measured with
        (FAST, None),  # not reported
        (None, None),  # never told
    ],
)
def test_other_running_models_do_not_escalate(running):
    r = router(running=running)
    d = r.decide(signals([0.1, 0.9]))
    assert d == d.model_copy(update={"action": "fast", "sentences": [], "llm_tokens": 0.0})
    assert d.reason == "uncalibrated_models"
    check = r.model_check()
    assert check["match"] is False and check["mismatches"]
    assert check["running"] == {"fast": running[0], "llm": running[1]}
    # the threshold policy escalates by uncertainty whatever the models
    assert r.decide(signals([0.1, 0.9]), "calibrated").sentences == [0]


def test_matching_models_after_a_switch_escalate_again():
    r = router(running=(FAST, "other-llm"))
    assert r.decide(signals([0.1, 0.9])).reason == "uncalibrated_models"
    r.set_running_models(fast=FAST, llm=LLM)
    assert r.decide(signals([0.1, 0.9])).reason == "expected_gain"
    assert r.model_check() == {
        "calibrated_for": {"fast": FAST, "llm": LLM, "data": ""},
        "running": {"fast": FAST, "llm": LLM},
        "match": True,
        "mismatches": [],
    }


def test_model_check_without_calibrated_for_matches():
    r = Router(parse_router_config(config(gain_spec([]), calibrated_for=None)))
    assert r.model_check() == {
        "calibrated_for": None,
        "running": {"fast": None, "llm": None},
        "match": True,
        "mismatches": [],
    }


def test_no_calibration_data_does_not_escalate():
    r = Router(parse_router_config(config(gain_spec([]), calibrated_for=None)))
    r.set_running_models(fast=FAST, llm=LLM)
    assert r.decide(signals([0.01, 0.02])).reason == "uncalibrated"
    assert not r.decide(signals([0.01])).escalates


def test_missing_signal_answers_fast():
    sig = signals([0.1])
    sig.per_sentence = {}
    assert router().decide(sig).reason == "signal_unavailable"


def test_budget_wraps_the_gain_policy():
    raw = config()
    raw["policies"]["default"]["burst"] = 130  # one sentence's worth
    raw["default_policy"] = "default"
    r = Router(parse_router_config(raw))
    r.set_running_models(fast=FAST, llm=LLM)
    assert r.decide(signals([0.1, 0.9])).reason == "expected_gain"
    assert r.decide(signals([0.1, 0.9])).reason == "budget_exhausted"


# --- refusals name the field ---------------------------------------------------------------------


def refused(raw: dict) -> str:
    with pytest.raises(PolicyConfigError) as exc:
        parse_router_config(raw)
    return str(exc.value)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"signal": "min_token_probability"}, "signal"),
        ({"signal": "ood_mahalanobis"}, "signal"),
        ({"min_gain_per_cost": -0.1}, "min_gain_per_cost"),
        ({"margin_se": -1}, "margin_se"),
        ({"metrics": ["relaxed_entity"]}, "metrics"),
        ({"metrics": []}, "metrics"),
        ({"whole_note_fraction": 0}, "whole_note_fraction"),
        ({"prize": 1}, "prize"),
        ({"buckets": [{"upper": 0.3, "gain": 0.1}]}, "buckets"),  # the last must be unbounded
        ({"buckets": [{"upper": None, "gain": 0.1}, {"upper": None, "gain": 0.1}]}, "buckets"),
        (
            {"buckets": [{"upper": 0.5, "gain": 0.1}, {"upper": 0.3, "gain": 0.1}, {"upper": None, "gain": 0}]},
            "buckets",
        ),
        ({"buckets": [{"upper": None, "gain": 0.1, "se": -1}]}, "buckets.0.se"),
        ({"buckets": [{"upper": None, "gain": float("nan")}]}, "buckets.0.gain"),
        ({"buckets": [{"upper": None}]}, "buckets.0.gain"),
    ],
)
def test_bad_gain_policy_names_the_field(patch, field):
    msg = refused(config({**gain_spec(), **patch}))
    assert msg.startswith(f"policies.g.{field}:"), msg
    assert "Value error" not in msg


def test_unknown_signal_lists_the_known_ones():
    msg = refused(config(gain_spec(signal="nope")))
    assert "min_token_prob" in msg and "max_entropy" in msg


@pytest.mark.parametrize(
    ("calibrated_for", "field"),
    [
        ({"fast": "clinie-fast", "llm": LLM}, "calibrated_for.fast"),  # no version
        ({"fast": "clinie fast@abc", "llm": LLM}, "calibrated_for.fast"),
        ({"fast": "", "llm": LLM}, "calibrated_for.fast"),
        ({"fast": FAST, "llm": "smollm2 135m"}, "calibrated_for.llm"),
        ({"fast": FAST, "llm": LLM + "+lora:"}, "calibrated_for.llm"),
        ({"fast": FAST, "llm": "/abs/path/model"}, "calibrated_for.llm"),
        ({"fast": FAST, "llm": 7}, "calibrated_for.llm"),
        ({"fast": FAST}, "calibrated_for.llm"),
        ({"fast": FAST, "llm": LLM, "lora": "x"}, "calibrated_for.lora"),
    ],
)
def test_model_ids_of_the_wrong_shape_are_refused(calibrated_for, field):
    msg = refused(config(calibrated_for=calibrated_for))
    assert msg.startswith(f"{field}:"), msg


@pytest.mark.parametrize(
    "ids",
    [
        {"fast": "clinie-fast@a9bed267db+fp32", "llm": "Meta-Llama-3-70B-Instruct+lora:clinie-sft"},
        {"fast": "my_model.v2@0f0f", "llm": "meta-llama/Meta-Llama-3-8B-Instruct"},
    ],
)
def test_model_ids_of_the_right_shape_are_accepted(ids):
    assert parse_router_config(config(calibrated_for=ids)).calibrated_for.llm == ids["llm"]


def test_a_gain_table_needs_calibrated_for():
    msg = refused(config(calibrated_for=None))
    assert msg.startswith("calibrated_for:") and "'g'" in msg


def test_refused_reload_keeps_the_running_policies_and_models():
    r = router()
    sig = signals([0.1, 0.9])
    before, cfg = r.decide(sig), r.config
    for bad in (
        config({**gain_spec(), "min_gain_per_cost": -1}),
        config({**gain_spec(), "signal": "nope"}),
        config(calibrated_for={"fast": "nope", "llm": LLM}),
    ):
        with pytest.raises(PolicyConfigError):
            r.reconfigure(bad)
        assert r.config is cfg
        assert r.decide(sig) == before
    assert r.model_check()["match"] is True
    # a valid reload calibrated for other models stops the escalations, and says why
    r.reconfigure(config(calibrated_for={"fast": FAST, "llm": "other-llm"}))
    assert r.decide(sig).reason == "uncalibrated_models"
    assert r.model_check()["mismatches"] == ["llm: calibrated for 'other-llm', running 'smollm2-135m-instruct-v2'"]


def test_the_shipped_policy_file_shape_round_trips(tmp_path):
    import yaml

    from router import load_router_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config()))
    cfg = load_router_config(path)
    assert cfg.calibrated_for is not None and cfg.calibrated_for.fast == FAST
    assert parse_router_config(json.loads(cfg.model_dump_json())) == cfg


# --- the gain table -------------------------------------------------------------------------------


def test_gain_buckets_recover_known_per_bucket_gains():
    rng = np.random.default_rng(5)
    values = rng.uniform(0, 1, 4000)
    truth = np.select([values < 0.25, values < 0.5, values < 0.75], [0.6, -0.2, 0.1], -0.4)
    gains = truth + rng.normal(0, 0.3, len(values))
    rows = gain_buckets(values, gains, buckets=4)
    assert [r["sentences"] for r in rows] == [1000] * 4
    assert [r["upper"] for r in rows[:-1]] == pytest.approx([0.25, 0.5, 0.75], abs=0.03)
    assert rows[-1]["upper"] is None
    for row, want in zip(rows, [0.6, -0.2, 0.1, -0.4], strict=True):
        assert row["gain"] == pytest.approx(want, abs=0.06)  # a quantile cut mixes a few neighbours
        assert row["se"] == pytest.approx(0.3 / np.sqrt(1000), rel=0.2)
    # and the policy built from it escalates exactly the gaining buckets
    spec = gain_policy_spec({"signal": "min_token_prob", "metrics": ["relaxed_entities"], "buckets": rows})
    r = router(spec)
    d = r.decide(signals([0.1, 0.3, 0.6, 0.9]))
    assert d.sentences == [0, 2]


def test_gain_buckets_default_size_and_ties():
    values = np.array([0.5] * 60 + [0.9] * 40)
    rows = gain_buckets(values, np.arange(100.0), min_per_bucket=20)  # 5 wanted, ties allow 2
    assert [r["sentences"] for r in rows] == [60, 40]
    assert rows[0]["upper"] == pytest.approx(0.7)
    assert rows[0]["gain"] == pytest.approx(29.5)
    assert gain_buckets([], []) == []
    assert len(gain_buckets(np.arange(30.0), np.zeros(30))) == 1  # fewer than 50: one bucket
    with pytest.raises(ValueError, match="differ in length"):
        gain_buckets([1.0], [1.0, 2.0])


def test_bucket_of_matches_the_policy_lookup():
    r = router()
    policy = r.policies["g"]
    uppers = [0.3, 0.6]
    for v in (0.0, 0.29, 0.3, 0.45, 0.6, 0.99):
        assert policy.bucket_gain(v) == pytest.approx([0.4, -0.25, -0.11][bucket_of(uppers, v)])


def test_sentence_gains_are_the_scaled_change_of_corpus_f1():
    k = METRICS.index("relaxed_entities")
    base = np.zeros((len(METRICS), 3))
    base[:, :] = (80, 20, 20)  # F1 0.8 everywhere
    deltas = np.zeros((10, len(METRICS), 3))
    deltas[0, k] = (1, -1, -1)  # one error fixed on both sides... of relaxed_entities only
    deltas[1, k] = (-1, 1, 1)
    g = sentence_gains(base, deltas, ["relaxed_entities"])
    want0 = 10 * (f1_from_counts(np.array([81, 19, 19])) - 0.8)
    assert g[0] == pytest.approx(want0) and g[0] > 0
    assert g[1] < 0 and np.all(g[2:] == 0)
    both = sentence_gains(base, deltas, ["relaxed_entities", "strict_entities"])
    assert both[0] == pytest.approx(want0 / 2)  # the mean over the metrics
    assert f1_from_counts(np.zeros(3)) == 0.0


def _doc() -> tuple[Document, list[tuple[int, int]]]:
    text = "Denies chest pain. Takes aspirin daily. Cough."
    spans = [
        GoldSpan(id="T1", label="problem", start=7, end=17),  # chest pain
        GoldSpan(id="T2", label="negation", start=0, end=6),  # Denies
        GoldSpan(id="T3", label="drug", start=25, end=32),  # aspirin
        GoldSpan(id="T4", label="problem", start=40, end=45),  # Cough
    ]
    rels = [GoldRelation(entity="T1", modifier="T2")]
    return Document(name="n", text=text, spans=spans, relations=rels), [(0, 18), (19, 39), (40, 46)]


def _result(text: str, ents: list[tuple[str, int, int]], mods=(), rels=()) -> NoteResult:
    e = [
        EntitySpan(id=f"E{i}", type=t, start=s, end=x, text=text[s:x], confidence=0.9)
        for i, (t, s, x) in enumerate(ents)
    ]
    m = [
        ModifierSpan(id=f"M{i}", type=t, start=s, end=x, text=text[s:x], confidence=0.9)
        for i, (t, s, x) in enumerate(mods)
    ]
    r = [Relation(entity=a, modifier=b, confidence=0.9) for a, b in rels]
    return NoteResult(
        note_id="n", entities=e, modifiers=m, relations=r, route=Route(tier="bert", escalated=False, reason="")
    )


def test_sentence_deltas_on_a_real_document():
    doc, sents = _doc()
    text = doc.text
    # fast: right in sentence 0, misses aspirin, right on Cough
    fast = _result(text, [("problem", 7, 17), ("problem", 40, 45)], [("negation", 0, 6)], [("E0", "M0")])
    # llm: wrong type in sentence 0 (and no modifier), finds aspirin, misses Cough
    llm = _result(text, [("test", 7, 17), ("drug", 25, 32)])
    d = sentence_deltas(doc, fast, llm, sents)
    k = {key: F1_KEYS.index(key) for key in F1_KEYS}
    assert tuple(d[0, k["strict_entities"]]) == (-1, 1, 1)  # the right entity lost, a wrong one added
    assert tuple(d[0, k["strict_modifiers"]]) == (-1, 0, 1)
    assert tuple(d[0, k["strict_relations"]]) == (-1, 0, 1)
    assert tuple(d[1, k["strict_entities"]]) == (1, 0, -1)  # aspirin found
    assert tuple(d[2, k["relaxed_entities"]]) == (-1, 0, 1)  # Cough missed
    # escalating every sentence changes the corpus counts by the sum of the deltas
    total_fast = score_counts(score_documents([doc], {"n": document_from_result("n", text, fast)}))
    total_llm = score_counts(score_documents([doc], {"n": document_from_result("n", text, llm)}))
    assert np.array_equal(total_fast + d.sum(axis=0), total_llm)


def test_fit_gain_table_finds_where_the_llm_helps():
    doc, sents = _doc()
    text = doc.text
    fast = _result(text, [("problem", 7, 17), ("problem", 40, 45)], [("negation", 0, 6)], [("E0", "M0")])
    llm = _result(text, [("test", 7, 17), ("drug", 25, 32)])
    sig = NoteSignals(
        sentences=sents,
        sentence_chars=[e - s for s, e in sents],
        per_sentence={"min_token_prob": np.array([0.9, 0.1, 0.8])},
    )
    table = fit_gain_table([doc], {"n": fast}, {"n": llm}, {"n": sig}, "min_token_prob", buckets=3)
    gains = {r["upper"]: r["gain"] for r in table["buckets"]}
    assert len(table["buckets"]) == 3
    assert table["buckets"][0]["gain"] > 0  # the uncertain sentence: the LLM found aspirin
    assert table["buckets"][1]["gain"] < 0 and table["buckets"][2]["gain"] < 0
    assert list(gains)[-1] is None
    assert table["gaining_sentences"] == 1
    assert table["gaining_f1"]["strict_entities"] > table["fast_f1"]["strict_entities"]
    # a note without an LLM answer gains nothing there
    empty = fit_gain_table([doc], {"n": fast}, {}, {"n": sig}, "min_token_prob", buckets=3)
    assert [r["gain"] for r in empty["buckets"]] == [0.0, 0.0, 0.0] and empty["llm_missing"] == ["n"]
    with pytest.raises(ValueError, match="sentence signal"):
        fit_gain_table([doc], {"n": fast}, {"n": llm}, {"n": sig}, "ood_mahalanobis")
