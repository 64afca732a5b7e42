"""Reference-image datasets. Each yields `ReferenceImage`s with the protocol's prompts."""

from bench.datasets.base import PromptSpec, ReferenceImage, protocol_subcategories

__all__ = ["PromptSpec", "ReferenceImage", "protocol_subcategories"]
