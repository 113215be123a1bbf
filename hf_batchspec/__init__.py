"""Batch speculative decoding for Hugging Face transformers' `generate` (EQSPEC/EXSPEC done right)."""

from .api import BatchSpeculativeGenerationMixin, enable
from .cache import RaggedCache, RaggedLayer
from .errors import BatchSpecError, UnsupportedModelError
from .profiling import calibrate
from .speculation import CostModel
from .stats import BatchSpecGenerateOutput, BatchSpecSeq2SeqOutput, BatchSpecStats
from .streaming import BatchIteratorStreamer, BatchStreamer
from .warmup import WarmupReport, warmup

__version__ = "0.1.0"

__all__ = [
    "BatchIteratorStreamer",
    "BatchStreamer",
    "BatchSpecError",
    "BatchSpecGenerateOutput",
    "BatchSpecSeq2SeqOutput",
    "BatchSpecStats",
    "BatchSpeculativeGenerationMixin",
    "CostModel",
    "RaggedCache",
    "RaggedLayer",
    "UnsupportedModelError",
    "WarmupReport",
    "calibrate",
    "enable",
    "warmup",
]
