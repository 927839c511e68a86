"""The embedded default LLM's conversion: parsing its GGUF once gives what transformers' own
three parses give (the shipped SmolLM2 GGUF, not a stand-in)."""

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deployments.llm_tier.default_model import gguf_parsed_once, gguf_path

pytestmark = pytest.mark.slow


def _load() -> tuple[torch.nn.Module, object]:
    path = gguf_path()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def test_one_parse_loads_the_same_weights_config_and_tokenizer_and_puts_gguf_back(monkeypatch):
    parses = []
    real_init = gguf.GGUFReader.__init__

    def counting_init(self, path, *args, **kwargs):
        parses.append(path)
        real_init(self, path, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counting_init)
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_parsed_once():
        model, tok = _load()
    assert len(parses) == 1
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader_class, name_map)

    parses.clear()
    plain_model, plain_tok = _load()
    assert len(parses) == 3  # transformers' own way: config, weights, tokenizer

    got, want = model.state_dict(), plain_model.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.config.to_dict() == plain_model.config.to_dict()
    text = "Denies chest pain. Aspirin 81 mg p.o. daily; BP 120/80."
    assert tok(text)["input_ids"] == plain_tok(text)["input_ids"]
    assert tok.get_vocab() == plain_tok.get_vocab()
