"""kinject: pretrain Llama-style models with knowledge triples spliced in at frequency F."""

from kinject import machine  # noqa: F401  (registers the resolvers conf/ reads)
