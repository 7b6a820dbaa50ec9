"""obliviate: machine unlearning for HF causal LMs and image classifiers, with evidence."""

__version__ = "0.1.0"
