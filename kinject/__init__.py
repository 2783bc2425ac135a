"""kinject: pretrain Llama-style models with knowledge triples spliced in at frequency F."""

from pathlib import Path

from kinject import machine  # noqa: F401  (registers the resolvers conf/ reads)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
"""The Hydra configs of the checkout kinject is installed from (`pip install -e .`)."""
