"""obliviate: machine unlearning for HF causal LMs and image classifiers, with evidence."""

__version__ = "0.1.0"

from obliviate import config_resolvers as _config_resolvers  # noqa: E402,F401  (registers ${tofu_split:...})
