"""LLM-side bad inputs: a missing GGUF file or package, IDK data missing for IDK methods."""

import pytest
import torch

from obliviate.data.text.tofu import load_idk_answers
from obliviate.errors import ConfigError, DataError
from obliviate.methods._common import idk_batch
from obliviate.models.llm import hf_causal_lm, resolve_model_path


def test_missing_gguf_file_names_the_files_present(tmp_path):
    (tmp_path / "other.gguf").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"GGUF file 'model.Q4.gguf' not found in .*other.gguf.*model.model_args.gguf_file"):
        hf_causal_lm({"model_args": {"pretrained_model_name_or_path": str(tmp_path), "gguf_file": "model.Q4.gguf"}})


def test_missing_model_package_says_what_to_install():
    with pytest.raises(ConfigError, match="pip install no-such-pkg-xyz"):
        resolve_model_path("pkg:no_such_pkg_xyz")


def test_idk_methods_without_idk_answers():
    batch = {"forget": {"input_ids": torch.zeros(2, 3, dtype=torch.long)}}
    with pytest.raises(DataError, match="IdkDPO needs IDK answers"):
        idk_batch(batch, "IdkDPO")
    with pytest.raises(DataError, match="IDK answers file .* does not exist"):
        load_idk_answers("/no/such/idontknow.jsonl")
