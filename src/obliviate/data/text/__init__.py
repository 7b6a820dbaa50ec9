"""Text data for the LLM track: TOFU QA loading, tokenisation, collators, raw text (MUSE, WMDP), synthetic data."""

from obliviate.data.text.qa import (
    IGNORE_INDEX,
    DataCollatorForSupervisedDataset,
    QADataset,
    QAwithIdkDataset,
    build_text_dataset,
    encode_qa,
    encode_rows,
)
from obliviate.data.text.pretraining import (
    COLLATORS,
    CompletionDataset,
    DataCollatorForPretraining,
    PretrainingDataset,
)
from obliviate.data.text.tofu import (
    TOFU_HUB_ID,
    TOFU_SCHEMAS,
    available_datasets,
    load_idk_answers,
    load_qa_rows,
    read_jsonl,
    resolve_dataset_spec,
    validate_rows,
)

__all__ = [
    "COLLATORS",
    "CompletionDataset",
    "DataCollatorForPretraining",
    "IGNORE_INDEX",
    "PretrainingDataset",
    "TOFU_HUB_ID",
    "TOFU_SCHEMAS",
    "DataCollatorForSupervisedDataset",
    "QADataset",
    "QAwithIdkDataset",
    "available_datasets",
    "build_text_dataset",
    "encode_qa",
    "encode_rows",
    "load_idk_answers",
    "load_qa_rows",
    "read_jsonl",
    "resolve_dataset_spec",
    "synthetic_tofu",
    "validate_rows",
    "write_synthetic_tofu",
]


def __getattr__(name: str):
    # Lazy: `python -m obliviate.data.text.synthetic` must not find the module pre-imported.
    if name in ("synthetic_tofu", "write_synthetic_tofu"):
        from obliviate.data.text import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
