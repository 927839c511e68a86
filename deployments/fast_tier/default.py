"""The embedded default fast tier: built on first use from the shared annotated notes, then cached.

Two models of the one default recipe (deployments/fast_tier/recipe.py says why):
- the **default** (`split: all`), what `make run`, `clinie serve` and `clinie extract` use: fitted
  on every annotated note, so it has no held-out notes; its card carries the recipe's dev scores
  and its confidences the recipe's calibration;
- the **held-out model** (`split: train`): the same settings fitted on the train split only. The
  benchmarks that score on the dev notes use it (`resolve_model_dir(held_out=True)`), and its
  measurement is the committed recipe. Built only when asked for.

Where things are (the cache, the training notes, `$CLINIE_MODEL_DIR`): `clinie.paths`.
The cache key covers the training config, the data and the package version, so a change to any of
them builds a new model instead of serving a stale one. A file lock keeps two processes from
building the same model at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import clinie
from clinie.brat import Document, corpus_hash, read_corpus
from clinie.calibration import CALIBRATION_FILE, ConfidenceCalibration
from clinie.ood import OOD_FILE
from clinie.paths import default_train_data, model_dir_override, models_home
from deployments.fast_tier.config import (
    CARD_NAME,
    GRAPH_ATTENTION,
    MANIFEST_NAME,
    QUANT_RECIPE,
    ModelManifest,
    SpanFloor,
    TrainConfig,
)

if TYPE_CHECKING:
    from deployments.fast_tier.recipe import Recipe

log = logging.getLogger(__name__)


Split = Literal["train", "all"]


def default_train_config(
    output_dir: Path | None = None, data_dir: Path | None = None, split: Split = "all"
) -> TrainConfig:
    """The default recipe: `split="all"` the served default, `"train"` its held-out model. The served
    default takes its held-out model's step count (steps_of_train_split): every note, in the time the
    first `make run` has always taken."""
    data = data_dir or default_train_data()
    return TrainConfig(
        data_dir=data,
        output_dir=output_dir or models_home() / "pending",
        split=split,
        steps_of_train_split=split == "all",
    )


# Up to quantization recipe v2 the recipe was part of the cache key below, so a new recipe trained
# the default model again; now a model with older int8 files is re-exported from its saved weights
# instead (`_export_outdated`: seconds, not minutes), and the key keeps the v2 text so that models
# cached before are found rather than trained again.
_KEY_QUANT = "dynamic-qint8-per-channel-first-layer-fp32-v2"


def default_model_dir(data_dir: Path | None = None, split: Split = "all") -> Path:
    """Where the default model (or, `split="train"`, its held-out model) for the current config,
    data and version lives (built or not)."""
    cfg = default_train_config(data_dir=data_dir, split=split)
    if not cfg.data_dir.is_dir():
        raise FileNotFoundError(
            f"no trained fast-tier model is configured and the training notes are not at {cfg.data_dir}; "
            "set CLINIE_TRAIN_DATA to a brat folder, or CLINIE_MODEL_DIR / --model to a trained model"
        )
    parts = [
        cfg.model_dump_json(exclude={"output_dir", "data_dir"}),
        corpus_hash(read_corpus(cfg.data_dir)),
        clinie.__version__,
        _KEY_QUANT,
    ]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return models_home() / f"default-{key}"


def default_model_tag(data_dir: Path | None = None, split: Split = "all") -> str:
    """The `name@version` the default model (or its held-out model) has, built or not: the version
    is a hash of the settings and the notes (TrainConfig.version), not of the trained weights."""
    cfg = default_train_config(data_dir=data_dir, split=split)
    return f"{cfg.name}@{cfg.version(corpus_hash(read_corpus(cfg.data_dir)))}"


def ensure_default_model(data_dir: Path | None = None, split: Split = "all") -> Path:
    """The default model's directory (or, `split="train"`, its held-out model's), training and
    exporting it first if it is not cached."""
    target = default_model_dir(data_dir, split)
    if (target / MANIFEST_NAME).exists():
        upgrade_model(target, data_dir)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it right now
        if not (target / MANIFEST_NAME).exists():
            from deployments.fast_tier.training.train import train

            what = "default" if split == "all" else "held-out (train split)"
            log.warning("building the embedded %s fast-tier model into %s (first run only)", what, target)
            train(default_train_config(output_dir=target, data_dir=data_dir, split=split))
    upgrade_model(target, data_dir)
    return target


def _export_outdated(manifest: ModelManifest) -> bool:
    """Whether a model's ONNX files predate the current export: no energy outputs, attention
    exported another way, or int8 files of another quantization recipe (re-exporting changes no
    weight: the model's tag stays)."""
    return (
        not manifest.energy_outputs
        or manifest.graph_attention != GRAPH_ATTENTION
        or manifest.quantization != QUANT_RECIPE
    )


def _notes(folder: Path | None, names: Iterable[str]) -> list[Document]:
    """The notes of `folder` named in `names` (none when the folder is not on this machine)."""
    wanted = set(names)
    return [d for d in read_corpus(folder) if d.name in wanted] if folder is not None else []


def _rescore_card(model_dir: Path, dev_docs: list[Document]) -> None:
    """The model card's int8 dev scores again, as the engine now answers (a re-exported graph, or
    another default span floor); left as they were when the dev notes are not on this machine."""
    if not dev_docs:
        return
    from deployments.fast_tier.training.train import score_card

    card = json.loads((model_dir / CARD_NAME).read_text())
    score_card(card, model_dir, dev_docs)
    (model_dir / CARD_NAME).write_text(json.dumps(card, indent=2))


def _card(model_dir: Path) -> dict:
    path = model_dir / CARD_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _scores_outdated(card: dict) -> bool:
    """Whether the card's dev scores were measured at another span floor than the engine's default
    (or before the floor existed)."""
    return bool(card.get("dev_scores_int8")) and card.get("dev_scores_span_floor") != SpanFloor().model_dump()


def _outdated_transferred_recipe(model_dir: Path, card: dict) -> tuple[Recipe, ConfidenceCalibration] | None:
    """The committed recipe and the model's calibration, when the model is calibrated through that
    recipe (`transferred_from`: a model trained on every note) and holds its maps, or quotes its
    scores, as they were, not as the file has them now (the recipe was measured again); else None.
    Other models quote no recipe of their own to refresh."""
    from deployments.fast_tier.recipe import load_recipe

    path, recipe = model_dir / CALIBRATION_FILE, load_recipe()
    if recipe is None or not path.exists():
        return None
    cal = ConfidenceCalibration.load(path)
    if cal.transferred_from != recipe.model:
        return None
    current = recipe.calibration_for(cal.model).model_dump(mode="json")
    if cal.model_dump(mode="json") == current and card.get("recipe") == recipe.card_section():
        return None
    return recipe, cal


def _dev_notes_for_calibration(card: dict, data_dir: Path | None) -> tuple[list[str], Path | None]:
    """The model card's dev notes and the folder they are in (None when it is not on this machine,
    or the model has no card)."""
    if not card:
        return [], None
    data = card.get("data", {})
    folder = data_dir or (Path(data["dir"]) if data.get("dir") else None)
    return list(data.get("dev_notes", [])), folder if folder is not None and folder.is_dir() else None


def _refresh_transferred_calibration(model_dir: Path, recipe: Recipe, cal: ConfidenceCalibration) -> None:
    """Give a model calibrated through the committed `recipe` (`_outdated_transferred_recipe`) the
    recipe's maps and scores together, as they are now (measured again after a re-export, or a new
    decoding default)."""
    from deployments.fast_tier.training.calibrate import transfer_calibration

    card = _card(model_dir)
    card["confidence_calibration"] = transfer_calibration(recipe, model_dir, cal.model)
    card["recipe"] = recipe.card_section()
    (model_dir / CARD_NAME).write_text(json.dumps(card, indent=2))


def upgrade_model(model_dir: Path, data_dir: Path | None = None) -> None:
    """Add what a model built by an earlier version lacks, without retraining: the tagger's
    energy outputs and the current graph attention (re-export from the saved weights), the
    router's OOD statistics (fitted on the training notes listed in its model card) and the
    confidence calibration (fitted on its dev notes); and brings its card up to date: dev scores
    measured at another span floor than the engine's default are measured again, and a model
    calibrated through the committed recipe takes its maps and scores again when the recipe was
    measured again. A no-op for current models. Without the dev notes on this machine the model
    runs uncalibrated and the engine says so."""
    manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
    needs_export = _export_outdated(manifest) and (model_dir / "pytorch" / "tagger").is_dir()
    needs_ood = not (model_dir / OOD_FILE).exists() and (model_dir / CARD_NAME).exists()
    card = _card(model_dir)
    dev_names, dev_dir = _dev_notes_for_calibration(card, data_dir)
    needs_cal = not (model_dir / CALIBRATION_FILE).exists() and bool(dev_names)
    needs_scores = _scores_outdated(card) and bool(dev_names) and dev_dir is not None
    needs_recipe = _outdated_transferred_recipe(model_dir, card) is not None
    if needs_cal and dev_dir is None:
        log.warning(
            "%s has no confidence calibration and its dev notes are not here: confidences stay raw "
            "(set CLINIE_TRAIN_DATA to the training folder to fit it once)",
            model_dir,
        )
        needs_cal = False
    if not (needs_export or needs_ood or needs_cal or needs_scores or needs_recipe):
        return
    with open(model_dir.parent / f"{model_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = ModelManifest.model_validate_json((model_dir / MANIFEST_NAME).read_text())
        export = _export_outdated(manifest) and (model_dir / "pytorch" / "tagger").is_dir()
        # read once for the steps that score on them: the card's re-scoring and the calibration
        dev_docs = _notes(dev_dir, dev_names) if export or needs_cal or needs_scores else []
        if export:
            from deployments.fast_tier.training.export import reexport

            log.warning("re-exporting %s from its saved weights with the current export recipe (once)", model_dir)
            reexport(model_dir)
            # the calibration maps were fitted on the old int8 files' outputs
            needs_cal = needs_cal or bool(dev_docs)
        if not (model_dir / OOD_FILE).exists() and (model_dir / CARD_NAME).exists():
            from deployments.fast_tier.training.train import fit_ood

            card = json.loads((model_dir / CARD_NAME).read_text())
            docs = _notes(data_dir or Path(card["data"]["dir"]), card["data"]["train_notes"])
            if docs:
                log.warning("fitting OOD statistics for %s on %d training notes (once)", model_dir, len(docs))
                fit_ood(model_dir, docs)
        if needs_cal and dev_docs:
            from deployments.fast_tier.training.calibrate import calibrate_model

            log.warning("fitting confidence calibration for %s on %d dev notes (once)", model_dir, len(dev_docs))
            calibrate_model(model_dir, dev_docs, f"dev split of {dev_dir}")
        # last: the scores describe the files and maps that serve, and the span floor applies to
        # calibrated confidences
        if dev_docs and (export or _scores_outdated(_card(model_dir))):
            log.warning("scoring %s on its dev notes again, as the engine now answers (once)", model_dir)
            _rescore_card(model_dir, dev_docs)
        stale = _outdated_transferred_recipe(model_dir, _card(model_dir))  # the recipe was measured again
        if stale is not None:
            _refresh_transferred_calibration(model_dir, *stale)


def resolve_model_dir(explicit: str | Path | None = None, held_out: bool = False) -> Path:
    """`explicit` (e.g. --model), else `$CLINIE_MODEL_DIR`, else the embedded default (built if
    needed) — or, `held_out=True`, for what scores on the dev notes, its held-out model."""
    path = model_dir_override(explicit)
    if path is not None:
        if not (path / MANIFEST_NAME).exists():
            raise FileNotFoundError(f"no trained fast-tier model at {path} ({MANIFEST_NAME} missing)")
        return path
    return ensure_default_model(split="train" if held_out else "all")
