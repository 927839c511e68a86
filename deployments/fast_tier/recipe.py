"""The default recipe, measured: what the default training config scores on notes it never saw.

The model `make run` serves is the default config fitted on every annotated note (`split: all`), in
the optimiser steps its held-out model takes (`steps_of_train_split`: the first run's time budget):
on this corpus 20 more training notes are worth points of F1 on unseen notes even in the same steps
(README, "How the fast tier works": 56 against 76 training notes). A model trained on every note can be neither
scored nor calibrated on any of them, so the recipe is measured on the train/dev split instead —
the same config with `split: train`, the *held-out model* — and that measurement, kept in git as
`default_recipe.json`, goes with the model that ships:

- its dev scores are the shipped model card's `recipe` section, named as the held-out model's;
- its confidence calibration (maps fitted on its dev notes) is the shipped model's, marked
  `transferred_from`. Measured between two sizes of this recipe (README): the 76-note model
  scored through the 56-note model's maps had a dev ECE of 0.031 / 0.045 / 0.074 (entities,
  modifiers, relations) against 0.16 / 0.15 / 0.32 raw and 0.019 / 0.042 / 0.053 with maps
  cross-fitted on its own dev predictions.

Only for the recipe it measured: a config (less the split) or data that differ leave the model
uncalibrated, and its card says why. Refresh after changing the default config or the notes:
`python -m deployments.fast_tier.recipe` (builds or finds the held-out model, writes the file).
Pure data, no model library: the trainer and the CLI read it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clinie.calibration import ConfidenceCalibration
from deployments.fast_tier.config import CARD_NAME, TrainConfig

RECIPE_FILE = Path(__file__).with_name("default_recipe.json")
# Settings that say where files go or how fast training runs, the split itself, and whether a
# `split: all` model counts its steps on the train split (so that it trains as long as the held-out
# model does): a model of the same recipe may differ in these.
_NOT_RECIPE = {"data_dir", "output_dir", "split", "steps_of_train_split", "threads", "export_fp32", "keep_pytorch"}


def recipe_settings(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of `cfg` that make its recipe (everything that changes the weights but the split)."""
    return cfg.model_dump(mode="json", exclude=_NOT_RECIPE)


class Recipe(BaseModel):
    """One measurement of a training recipe on the train/dev split (`default_recipe.json`)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = Field(default=1, description="File format version.")
    model: str = Field(description="`name@version` of the held-out model measured (trained on the train split).")
    settings: dict[str, Any] = Field(description="Its training settings, less paths, threads and the split.")
    data_hash: str = Field(description="Content hash of the annotated notes it was split from.")
    train_notes: int = Field(ge=1, description="Notes it trained on.")
    dev_notes: list[str] = Field(min_length=1, description="The notes it was scored and calibrated on.")
    dev_scores_int8: dict[str, float] = Field(
        description="F1 on the dev notes, int8 as served: `{strict,relaxed}_{entities,modifiers,relations}_f1`."
    )
    calibration: ConfidenceCalibration = Field(description="Its confidence calibration, fitted on the dev notes.")

    def mismatch(self, cfg: TrainConfig, data_hash: str) -> str | None:
        """None when this is a measurement of `cfg`'s recipe on the same notes; otherwise why not."""
        if data_hash != self.data_hash:
            return f"the notes differ from the ones the recipe was measured on (hash {self.data_hash})"
        mine = recipe_settings(cfg)
        changed = sorted(k for k in set(mine) | set(self.settings) if mine.get(k) != self.settings.get(k))
        if changed:
            return "the training settings differ from the measured recipe's: " + ", ".join(changed)
        return None

    def calibration_for(self, model_tag: str) -> ConfidenceCalibration:
        """The recipe's calibration, for a model of the same recipe trained on more notes."""
        return self.calibration.model_copy(update={"model": model_tag, "transferred_from": self.model})

    def card_section(self) -> dict[str, object]:
        """What a model card built from this recipe says about it."""
        return {
            "measured_model": self.model,
            "train_notes": self.train_notes,
            "dev_notes": len(self.dev_notes),
            "dev_scores_int8": self.dev_scores_int8,
            "note": "scores of the same settings trained on the train split only, on dev notes it never "
            "saw; this model also trained on those notes, so it has no held-out score of its own",
        }


def load_recipe(path: Path | None = None) -> Recipe | None:
    """The recipe measurement at `path` (default: the committed one; None when the file is absent)."""
    path = path or RECIPE_FILE
    if not path.exists():
        return None
    return Recipe.model_validate_json(path.read_text())


def headline(scores: dict[str, Any]) -> dict[str, float]:
    """`{strict,relaxed}_{entities,modifiers,relations}_f1` of a model card's `dev_scores_int8`."""
    return {
        f"{mode}_{group}_f1": scores[mode][group]["overall"]["f1"]
        for mode in ("strict", "relaxed")
        for group in ("entities", "modifiers", "relations")
    }


def recipe_of(model_dir: Path, cfg: TrainConfig, data_hash: str) -> Recipe:
    """The measurement of a held-out model (trained with `cfg`, `split: train`) from its folder."""
    from clinie.calibration import CALIBRATION_FILE

    card = json.loads((model_dir / CARD_NAME).read_text())
    if cfg.split != "train" or not card["data"].get("dev_notes"):
        raise ValueError(f"{model_dir} is not a held-out model (trained on the train split, with dev notes)")
    return Recipe(
        model=card["model"],
        settings=recipe_settings(cfg),
        data_hash=data_hash,
        train_notes=len(card["data"]["train_notes"]),
        dev_notes=card["data"]["dev_notes"],
        dev_scores_int8=headline(card["dev_scores_int8"]),
        calibration=ConfidenceCalibration.load(model_dir / CALIBRATION_FILE),
    )


def main(argv: list[str] | None = None) -> int:
    from clinie.brat import corpus_hash, read_corpus
    from deployments.fast_tier.default import default_train_config, ensure_default_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(RECIPE_FILE), help=f"Where to write it (default: {RECIPE_FILE}).")
    args = p.parse_args(argv)
    model_dir = ensure_default_model(split="train")  # trained once and cached, like the default
    cfg = default_train_config(split="train")
    recipe = recipe_of(model_dir, cfg, corpus_hash(read_corpus(cfg.data_dir)))
    Path(args.output).write_text(recipe.model_dump_json(indent=2) + "\n")
    print(json.dumps({"recipe": args.output, "model": recipe.model, "dev_scores_int8": recipe.dev_scores_int8}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
