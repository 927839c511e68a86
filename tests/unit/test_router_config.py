"""Router configuration: parsing, files, refusals that name the field, and hot reload."""

from __future__ import annotations

import json
import sys
import threading
from typing import Literal

import numpy as np
import pytest
import yaml

from router import (
    REGISTRY,
    Decision,
    NoteSignals,
    Policy,
    PolicyConfig,
    PolicyConfigError,
    RouteContext,
    Router,
    RouterConfig,
    UnknownPolicy,
    fallback_config,
    load_router_config,
    parse_router_config,
    register,
)
from router.policies.builtin import Budget, Threshold

VALID = {
    "default_policy": "default",
    "costs": {"llm_cost_per_token": 2.0, "chars_per_token": 4.0, "llm_tokens_per_sentence": 100.0},
    "load": {"max_llm_queue": 4, "latency_headroom": 1.5},
    "policies": {
        "calibrated": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.62},
        "entropy": {"kind": "threshold", "signal": "max_entropy", "threshold": 1.2, "scope": "note"},
        "default": {"kind": "budget", "inner": "calibrated", "rate_per_minute": 200000, "burst": 50000},
    },
}


def with_policy(name: str, spec: dict, default: str | None = None) -> dict:
    raw = json.loads(json.dumps(VALID))
    raw["policies"][name] = spec
    if default is not None:
        raw["default_policy"] = default
    return raw


def refused(raw: dict) -> str:
    with pytest.raises(PolicyConfigError) as exc:
        parse_router_config(raw)
    return str(exc.value)


def signals(min_prob: list[float], chars: int = 40) -> NoteSignals:
    ranges = [(i * (chars + 1), i * (chars + 1) + chars) for i in range(len(min_prob))]
    return NoteSignals(
        sentences=ranges,
        sentence_chars=[chars] * len(min_prob),
        per_sentence={"min_token_prob": np.array(min_prob)},
        note={"min_token_prob": min(min_prob)},
    )


# --- parsing and files ---------------------------------------------------------------------------


def check_valid(cfg: RouterConfig) -> None:
    assert cfg.default_policy == "default"
    assert cfg.costs.llm_cost_per_token == 2.0
    assert cfg.load.max_llm_queue == 4 and cfg.load.latency_headroom == 1.5
    kinds = {n: p.kind for n, p in cfg.all_policies().items()}
    assert kinds == {
        "calibrated": "threshold",
        "entropy": "threshold",
        "default": "budget",
        "fast-only": "fast-only",
        "llm-only": "llm-only",
    }
    assert cfg.all_policies()["calibrated"].threshold == 0.62
    assert cfg.all_policies()["entropy"].scope == "note"
    assert cfg.all_policies()["default"].inner == "calibrated"


def test_parse_valid_config_round_trips():
    cfg = parse_router_config(VALID)
    check_valid(cfg)
    again = parse_router_config(cfg.model_dump(mode="json"))
    assert again == cfg
    check_valid(again)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_load_valid_file(tmp_path, suffix):
    path = tmp_path / f"policies{suffix}"
    path.write_text(json.dumps(VALID) if suffix == ".json" else yaml.safe_dump(VALID))
    cfg = load_router_config(path)
    check_valid(cfg)
    assert cfg == parse_router_config(VALID)


def test_load_the_documented_example(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(
        "default_policy: default\n"
        "costs: {llm_cost_per_token: 1.0}\n"
        "load: {max_llm_queue: 8}\n"
        "policies:\n"
        "  calibrated: {kind: threshold, signal: min_token_prob, threshold: 0.62}\n"
        "  default: {kind: budget, inner: calibrated, rate_per_minute: 200000, burst: 50000}\n"
    )
    cfg = load_router_config(path)
    assert cfg.all_policies()["default"].burst == 50000


def test_defaults_and_builtins_exist_without_any_policy():
    cfg = parse_router_config({"default_policy": "fast-only"})
    assert set(cfg.all_policies()) == {"fast-only", "llm-only"}
    # `default` is the default name, and it must then be configured
    assert "default_policy" in refused({})


def test_fallback_config_is_valid_and_routes():
    cfg = fallback_config()
    assert parse_router_config(cfg.model_dump(mode="json")) == cfg
    policies = cfg.all_policies()
    assert policies[cfg.default_policy].kind == "budget"
    # nothing measured: the default does not escalate on a gain it never measured, and says so
    assert policies[policies[cfg.default_policy].inner].kind == "gain"
    r = Router(cfg)
    r.set_running_models(fast="clinie-fast@a9bed267db", llm="smollm2-135m-instruct-v2")
    d = r.decide(signals([0.9, 0.2]))
    assert not d.escalates and d.reason == "uncalibrated"
    # the uncertainty threshold is still there by name
    assert r.decide(signals([0.9, 0.2]), "confidence").sentences == [1]


# --- refusals name the field ---------------------------------------------------------------------


def test_unknown_kind_names_policies_name_kind():
    msg = refused(with_policy("odd", {"kind": "magic", "signal": "min_token_prob"}))
    assert msg.startswith("policies.odd.kind:")
    assert "'magic'" in msg and "threshold" in msg and "budget" in msg
    assert refused(with_policy("odd", {"signal": "min_token_prob"})).startswith("policies.odd.kind:")


def test_unhashable_kind_is_refused_not_crashed():
    assert refused(with_policy("odd", {"kind": ["threshold"]})).startswith("policies.odd.kind:")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"kind": "threshold", "signal": "min_token_probability", "threshold": 0.5}, "signal"),
        ({"kind": "threshold", "signal": "ood_mahalanobis", "threshold": 0.5}, "signal"),  # note-scope signal
        ({"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5, "scoep": "note"}, "scoep"),  # typo
        ({"kind": "threshold", "signal": "min_token_prob", "thresold": 0.5}, "threshold"),  # typo: required missing
        ({"kind": "threshold", "signal": "min_token_prob"}, "threshold"),  # missing
        ({"kind": "threshold", "signal": "min_token_prob", "threshold": "high"}, "threshold"),
        ({"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5, "scope": "word"}, "scope"),
        ({"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5, "whole_note_fraction": 0}, None),
        ({"kind": "budget", "inner": "calibrated", "rate_per_minute": -1, "burst": 10}, "rate_per_minute"),
        ({"kind": "budget", "inner": "calibrated", "rate_per_minute": 1, "burst": 0}, "burst"),
        ({"kind": "fast-only", "extra": 1}, "extra"),
    ],
)
def test_bad_field_names_policies_name_field(spec, field):
    field = field or "whole_note_fraction"
    msg = refused(with_policy("bad", spec))
    assert msg.startswith(f"policies.bad.{field}:"), msg
    assert "Value error" not in msg


def test_unknown_signal_lists_the_known_ones():
    msg = refused(with_policy("bad", {"kind": "threshold", "signal": "nope", "threshold": 0.5}))
    assert "min_token_prob" in msg and "max_entropy" in msg


@pytest.mark.parametrize(
    ("raw_patch", "prefix"),
    [
        ({"polices": {}}, "polices"),
        ({"costs": {"chars_per_token": 0}}, "costs.chars_per_token"),
        ({"costs": {"llm_cost_per_tokens": 1}}, "costs.llm_cost_per_tokens"),
        ({"load": {"max_llm_queue": -1}}, "load.max_llm_queue"),
    ],
)
def test_bad_top_level_field_is_named(raw_patch, prefix):
    raw = {**json.loads(json.dumps(VALID)), **raw_patch}
    assert refused(raw).startswith(f"{prefix}:")


@pytest.mark.parametrize("builtin", ["fast-only", "llm-only"])
def test_builtins_cannot_be_redefined(builtin):
    msg = refused(with_policy(builtin, {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5}))
    assert msg.startswith(f"policies.{builtin}:")
    # restating it unchanged is harmless
    cfg = parse_router_config(with_policy(builtin, {"kind": builtin}))
    assert cfg.all_policies()[builtin].kind == builtin


def test_default_policy_must_be_configured():
    raw = {**VALID, "default_policy": "missing"}
    msg = refused(raw)
    assert msg.startswith("default_policy:") and "'missing'" in msg
    assert parse_router_config({**VALID, "default_policy": "llm-only"}).default_policy == "llm-only"


def test_budget_inner_must_exist():
    msg = refused(with_policy("b", {"kind": "budget", "inner": "ghost", "rate_per_minute": 1, "burst": 1}))
    assert msg.startswith("policies.b.inner:") and "'ghost'" in msg


@pytest.mark.parametrize(
    "policies",
    [
        {"a": {"kind": "budget", "inner": "a", "rate_per_minute": 1, "burst": 1}},
        {
            "a": {"kind": "budget", "inner": "b", "rate_per_minute": 1, "burst": 1},
            "b": {"kind": "budget", "inner": "a", "rate_per_minute": 1, "burst": 1},
        },
        {
            "a": {"kind": "budget", "inner": "b", "rate_per_minute": 1, "burst": 1},
            "b": {"kind": "budget", "inner": "c", "rate_per_minute": 1, "burst": 1},
            "c": {"kind": "budget", "inner": "b", "rate_per_minute": 1, "burst": 1},
        },
    ],
)
def test_budget_inner_cycle_is_refused(policies):
    msg = refused({"default_policy": "fast-only", "policies": policies})
    assert "cycle" in msg and msg.startswith("policies.") and ".inner:" in msg


def test_budget_chain_without_cycle_is_accepted():
    policies = {
        "a": {"kind": "budget", "inner": "b", "rate_per_minute": 0, "burst": 1000},
        "b": {"kind": "budget", "inner": "llm-only", "rate_per_minute": 0, "burst": 1000},
    }
    r = Router(parse_router_config({"default_policy": "a", "policies": policies}))
    assert r.decide(signals([0.9])).action == "note"


def test_budget_over_a_later_invalid_policy_names_that_policy():
    # the wrapped policy comes after its budget: its own error must be reported, not a crash
    bogus = {
        "default_policy": "a",
        "policies": {
            "a": {"kind": "budget", "inner": "b", "rate_per_minute": 1, "burst": 1},
            "b": {"kind": "bogus"},
        },
    }
    assert refused(bogus).startswith("policies.b.kind:")
    bad_signal = {
        "default_policy": "a",
        "policies": {
            "a": {"kind": "budget", "inner": "b", "rate_per_minute": 1, "burst": 1},
            "b": {"kind": "threshold", "signal": "nope", "threshold": 1},
        },
    }
    assert refused(bad_signal).startswith("policies.b.signal:")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("p.yaml", "policies: {a: [unclosed\n", ["p.yaml", "not valid yaml"]),
        ("p.yaml", "default_policy: x\n  policies: : :\n", ["not valid yaml"]),
        ("p.json", '{"policies": ', ["p.json", "not valid json"]),
    ],
)
def test_malformed_file_is_refused_clearly(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyConfigError) as exc:
        load_router_config(path)
    for w in words:
        assert w in str(exc.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [("p.yaml", "- a\n- b\n"), ("p.yaml", ""), ("p.yaml", "just a string\n"), ("p.json", "[1, 2]")],
)
def test_non_mapping_file_is_refused(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PolicyConfigError, match="must hold a mapping"):
        load_router_config(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(PolicyConfigError, match="cannot read policy file"):
        load_router_config(tmp_path / "absent.yaml")


def test_non_utf8_file_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"default_policy: \xff\xfe\n")
    with pytest.raises(PolicyConfigError, match="not UTF-8"):
        load_router_config(path)


def test_file_errors_name_the_field(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(with_policy("calibrated", {"kind": "threshold", "signal": "x", "threshold": 1})))
    with pytest.raises(PolicyConfigError, match=r"^policies\.calibrated\.signal:"):
        load_router_config(path)


# --- hot reload ----------------------------------------------------------------------------------


def config_with(threshold: float, burst: float = 1e9, default_policy: str = "default") -> dict:
    return {
        "default_policy": default_policy,
        "costs": {"llm_tokens_per_sentence": 100.0, "chars_per_token": 4.0},
        "policies": {
            "default": {"kind": "budget", "inner": "calibrated", "rate_per_minute": 0, "burst": burst},
            "calibrated": {"kind": "threshold", "signal": "min_token_prob", "threshold": threshold},
        },
    }


def test_invalid_reconfigure_keeps_the_running_config():
    r = Router(parse_router_config(config_with(0.5)))
    sig = signals([0.4, 0.9])
    before = r.decide(sig)
    assert before.sentences == [0]
    config, policies = r.config, dict(r.policies)
    bad = config_with(0.95)
    bad["policies"]["calibrated"]["signal"] = "nope"
    with pytest.raises(PolicyConfigError, match=r"policies\.calibrated\.signal"):
        r.reconfigure(bad)
    with pytest.raises(PolicyConfigError, match="default_policy"):
        r.reconfigure({**config_with(0.95), "default_policy": "missing"})
    assert r.config is config
    assert r.policies == policies
    assert r.decide(sig) == before


def test_valid_reconfigure_changes_decisions():
    r = Router(parse_router_config(config_with(0.5)))
    sig = signals([0.4, 0.9])
    assert r.decide(sig).sentences == [0]
    r.reconfigure(config_with(0.95))
    assert r.decide(sig).action == "note"
    r.reconfigure(parse_router_config(config_with(0.3)))  # a RouterConfig is accepted too
    assert r.decide(sig).reason == "confident"
    new = config_with(0.3)
    new["policies"]["other"] = {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.95}
    r.reconfigure(new)
    assert r.decide(sig, "other").action == "note"
    assert "other" in r.known


def test_unchanged_budget_keeps_its_bucket_level_and_follows_the_new_inner():
    r = Router(parse_router_config(config_with(0.5, burst=1000)))
    sig = signals([0.2, 0.9])  # 100 + 3 * 40 / 4 = 130 tokens with one sentence flagged
    assert r.decide(sig).sentences == [0]
    budget = r.policies["default"]
    assert isinstance(budget, Budget)
    assert budget.bucket.level == pytest.approx(870)
    r.reconfigure(config_with(0.95, burst=1000))  # only the inner policy changes
    assert r.policies["default"] is budget
    assert budget.bucket.level == pytest.approx(870)
    d = r.decide(sig)  # the kept budget uses the new inner: both sentences flagged
    assert d.action == "note"
    assert budget.bucket.level == pytest.approx(870 - 260)


def test_changed_budget_starts_full():
    r = Router(parse_router_config(config_with(0.5, burst=1000)))
    assert r.decide(signals([0.2, 0.9])).escalates
    old = r.policies["default"]
    r.reconfigure(config_with(0.5, burst=2000))
    assert r.policies["default"] is not old
    assert r.policies["default"].bucket.level == pytest.approx(2000)
    assert old.bucket.level == pytest.approx(870)


def test_exhausted_budget_stays_exhausted_across_an_unrelated_reload():
    cfg = config_with(0.5, burst=130)
    r = Router(parse_router_config(cfg))
    sig = signals([0.2, 0.9])
    assert r.decide(sig).escalates
    assert r.decide(sig).reason == "budget_exhausted"
    cfg["load"] = {"max_llm_queue": 2}
    r.reconfigure(cfg)
    assert r.decide(sig).reason == "budget_exhausted"


HOOK_KIND = "test-router-reload-hook"


@pytest.fixture
def reload_hook():
    """A policy kind that runs a callback while the router builds it (during `reconfigure`)."""
    calls: list = []

    class HookConfig(PolicyConfig):
        kind: Literal["test-router-reload-hook"] = HOOK_KIND
        version: int = 0

    @register(HOOK_KIND)
    class Hook(Policy):
        Config = HookConfig

        def __init__(self, name, config, resolve):  # type: ignore[no-untyped-def]
            super().__init__(name, config, resolve)
            for call in calls:
                call()

        def decide(self, ctx: RouteContext) -> Decision:
            return Decision(action="fast", reason="hook")

    try:
        yield calls
    finally:
        REGISTRY.pop(HOOK_KIND, None)


def test_decision_in_flight_during_reload_sees_a_complete_config(reload_hook):
    """A request that took the running policies just before a reload must still be answerable
    while the reload builds the new ones (it ran concurrently; here it runs inside the build)."""

    def cfg(version: int) -> dict:
        return {
            "default_policy": "default",
            "policies": {  # the budget is listed before the policy it wraps
                "default": {"kind": "budget", "inner": "calibrated", "rate_per_minute": 0, "burst": 1e9},
                "hook": {"kind": HOOK_KIND, "version": version},
                "calibrated": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5},
            },
        }

    r = Router(parse_router_config(cfg(1)))
    running = r.policies  # what a request already in flight holds
    sig = signals([0.2, 0.9])
    seen: list[Decision] = []
    reload_hook.append(lambda: seen.append(running["default"].decide(RouteContext(sig, r.config.costs))))
    r.reconfigure(cfg(2))
    assert [d.sentences for d in seen] == [[0]]
    assert r.decide(sig).sentences == [0]


def test_decisions_stay_consistent_while_reconfiguring_concurrently():
    configs = [config_with(0.5), config_with(0.95)]
    parsed = [parse_router_config(c) for c in configs]
    sig = signals([0.4, 0.9, 0.99])
    expected = []
    for c in parsed:
        expected.append(Router(c).decide(sig))
    assert expected[0] != expected[1]

    r = Router(parsed[0])
    stop = threading.Event()
    errors: list[BaseException] = []
    answers: list[Decision] = []

    def decide() -> None:
        try:
            while not stop.is_set():
                answers.append(r.decide(sig))
        except BaseException as exc:  # any failure fails the test
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=decide) for _ in range(2)]
        for w in workers:
            w.start()
        for i in range(300):
            r.reconfigure(configs[i % 2] if i % 3 else parsed[i % 2])
        stop.set()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    assert answers
    assert all(a in expected for a in answers)
    assert r.rates()["notes"] == len(answers)


def test_requests_without_a_policy_name_survive_a_default_switch():
    """Reloads that rename the default policy: a request naming none never sees a mix of the
    old config's default name and the new config's policies."""
    a = {"default_policy": "a", "policies": {"a": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.5}}}
    b = {"default_policy": "b", "policies": {"b": {"kind": "threshold", "signal": "min_token_prob", "threshold": 0.95}}}
    r = Router(parse_router_config(a))
    sig = signals([0.4, 0.9, 0.99])
    expected = [Router(parse_router_config(c)).decide(sig) for c in (a, b)]
    stop = threading.Event()
    errors: list[BaseException] = []
    answers: list[Decision] = []

    def decide() -> None:
        try:
            while not stop.is_set():
                answers.append(r.decide(sig))
        except BaseException as exc:  # any failure fails the test
            errors.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=decide) for _ in range(2)]
        for w in workers:
            w.start()
        for i in range(2000):
            r.reconfigure((a, b)[i % 2])
        stop.set()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, repr(errors[0])
    assert all(x in expected for x in answers)


def test_threshold_instances_are_rebuilt_only_when_changed():
    r = Router(parse_router_config(config_with(0.5)))
    calibrated = r.policies["calibrated"]
    assert isinstance(calibrated, Threshold)
    r.reconfigure(config_with(0.5))
    assert r.policies["calibrated"] is calibrated
    r.reconfigure(config_with(0.6))
    assert r.policies["calibrated"] is not calibrated


def test_an_empty_policy_name_is_unknown_not_the_default():
    r = Router(fallback_config())
    assert r.check(None) == r.config.default_policy
    with pytest.raises(UnknownPolicy):
        r.check("")
