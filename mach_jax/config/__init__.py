"""Configuration: a small tree of frozen dataclasses, the only place defaults live.

``sections`` holds four sections (``evaluation`` the fifth, ``rerank`` the sixth, ``partition`` the seventh) and their validation, ``tree`` the whole ``Config`` and its
JSON round trip, ``presets`` the named settings. Import from here.
"""

from mach_jax.config.evaluation import AGGREGATIONS, DECODERS, DEFAULT_PROPENSITY, RERANKER_USES, EvalConfig
from mach_jax.config.presets import PRESETS, get_preset
from mach_jax.config.partition import LABEL_BUCKETS, PartitionConfig
from mach_jax.config.rerank import RERANK_UPDATES, RerankConfig
from mach_jax.config.sections import (DEVICE_DATA, EMBEDDING_OPTIMIZERS, EMBEDDING_UPDATES, HOST_LOADERS, INPUT_LAYERS,
                                      INPUT_TRANSFORMS, KERNEL_FORMS, LR_SCHEDULES, OVERFLOW_POLICIES, PRECISIONS,
                                      ROWWISE_ADAGRAD_LEARNING_RATE,
                                      DataConfig, ModelConfig, ParallelConfig, SyntheticConfig, TrainConfig)
from mach_jax.config.tree import FORMAT_VERSION, Config, resumable_fields

__all__ = ["AGGREGATIONS", "DECODERS", "DEFAULT_PROPENSITY", "DEVICE_DATA", "EMBEDDING_OPTIMIZERS", "EMBEDDING_UPDATES", "FORMAT_VERSION", "HOST_LOADERS",
           "INPUT_LAYERS", "INPUT_TRANSFORMS", "KERNEL_FORMS", "LABEL_BUCKETS", "LR_SCHEDULES", "OVERFLOW_POLICIES", "PRECISIONS", "PRESETS", "RERANK_UPDATES", "RERANKER_USES",
           "ROWWISE_ADAGRAD_LEARNING_RATE", "Config", "DataConfig", "EvalConfig", "ModelConfig", "ParallelConfig", "PartitionConfig",
           "RerankConfig", "SyntheticConfig", "TrainConfig", "get_preset", "resumable_fields"]
