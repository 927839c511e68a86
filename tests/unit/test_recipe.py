"""The committed measurement of the default recipe (deployments/fast_tier/recipe.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clinie.brat import corpus_hash, read_corpus
from clinie.calibration import CALIBRATION_FILE, ConfidenceCalibration
from deployments.fast_tier.config import TrainConfig
from deployments.fast_tier.default import default_model_dir, default_model_tag, default_train_config
from deployments.fast_tier.recipe import load_recipe


def test_the_committed_recipe_is_the_default_settings_on_the_shared_notes(train_dir: Path):
    """The served default takes this file's calibration and dev scores only while it measures the
    default settings on these notes: change either without `python -m deployments.fast_tier.recipe`
    and this fails (the default would then be built uncalibrated)."""
    recipe = load_recipe()
    assert recipe is not None
    served = default_train_config(data_dir=train_dir, split="all")
    assert recipe.mismatch(served, corpus_hash(read_corpus(train_dir))) is None
    assert recipe.model == default_model_tag(train_dir, split="train")
    assert recipe.calibration.model == recipe.model and recipe.calibration.fitted_on.notes == recipe.dev_notes
    assert recipe.train_notes + len(recipe.dev_notes) == len(read_corpus(train_dir))
    # the served default trains as long as its held-out model (the first run's budget)
    assert served.steps_of_train_split
    assert not default_train_config(data_dir=train_dir, split="train").steps_of_train_split
    # the served default and its held-out model are two models, cached apart
    assert default_model_tag(train_dir, "all") != recipe.model
    assert default_model_dir(train_dir, "all") != default_model_dir(train_dir, "train")


def test_a_recipe_applies_only_to_its_own_settings_and_notes(train_dir: Path, tmp_path: Path):
    recipe = load_recipe()
    assert recipe is not None
    data_hash = corpus_hash(read_corpus(train_dir))
    cfg = default_train_config(data_dir=train_dir, split="all")
    # where files go and how many threads train are not the recipe
    moved = cfg.model_copy(update={"output_dir": tmp_path / "x", "threads": 1})
    assert recipe.mismatch(moved, data_hash) is None
    why = recipe.mismatch(cfg.model_copy(update={"tagger_epochs": 8.0, "seed": 14}), data_hash)
    assert why is not None and "seed" in why and "tagger_epochs" in why
    why = recipe.mismatch(cfg, "0" * 16)
    assert why is not None and "notes differ" in why


def test_a_transferred_calibration_names_both_models(tmp_path: Path):
    recipe = load_recipe()
    assert recipe is not None
    cal = recipe.calibration_for("clinie-fast@0123456789")
    assert cal.model == "clinie-fast@0123456789" and cal.transferred_from == recipe.model
    assert cal.maps == recipe.calibration.maps
    cal.save(tmp_path / CALIBRATION_FILE)
    assert ConfidenceCalibration.for_model(tmp_path, "clinie-fast@0123456789") == cal
    with pytest.raises(ValueError, match="fitted for clinie-fast@0123456789"):
        ConfidenceCalibration.for_model(tmp_path, recipe.model)


def test_counting_steps_on_the_train_split_is_part_of_the_version_only_when_on(tmp_path: Path):
    """A later setting: models trained without it keep the tags they had (the committed recipe's
    and the policies' `calibrated_for` name them), and turning it on makes another model."""
    cfg = TrainConfig(data_dir=tmp_path, output_dir=tmp_path / "m", split="all")
    payload = cfg.model_dump_json(exclude={"data_dir", "output_dir", "threads", "export_fp32", "keep_pytorch"})
    without = hashlib.sha256((payload.replace(',"steps_of_train_split":false', "") + "h").encode()).hexdigest()[:10]
    assert cfg.version("h") == without
    assert cfg.model_copy(update={"steps_of_train_split": True}).version("h") != cfg.version("h")


def test_the_shipped_policies_are_calibrated_for_the_served_default(train_dir: Path):
    """`calibrated_for.fast` must name the model `make run` serves, or the `gain` policy answers
    every note from the fast tier as `uncalibrated_models`; `data` names the model measured."""
    import yaml

    from clinie.paths import DEFAULT_POLICIES

    shipped = yaml.safe_load(DEFAULT_POLICIES.read_text())["calibrated_for"]
    assert shipped["fast"] == default_model_tag(train_dir, "all")
    assert default_model_tag(train_dir, "train") in shipped["data"]
