"""Once-for-all neural architecture search (Cai et al. 2022, Sec. 3.1).

- :mod:`~mobiledl.automl.nas.space`: the MobileNetV3-style MBConv space and architectures.
- :mod:`~mobiledl.automl.nas.elastic`: the elastic supernet (kernel, depth, expand ratio,
  resolution; Cai et al., "Once-for-All", ICLR 2020).
- :mod:`~mobiledl.automl.nas.train`: progressive shrinking with in-place distillation.
- :mod:`~mobiledl.automl.nas.extract`: sub-networks as ordinary modules, BN recalibration,
  model files ``load_model`` can rebuild.
- :mod:`~mobiledl.automl.nas.efficiency`: latency lookup table and predictor (ONNX Runtime),
  MACs and peak memory.
- :mod:`~mobiledl.automl.nas.predictor`: the accuracy predictor.
- :mod:`~mobiledl.automl.nas.search`: evolutionary, random and Pareto search.
- :mod:`~mobiledl.automl.nas.proxyless`: ProxylessNAS-style differentiable search (Cai et al.,
  ICLR 2019).
- :mod:`~mobiledl.automl.nas.evaluate`: sub-network evaluation in process or on Ray.
- :mod:`~mobiledl.automl.nas.run`: one search end to end.

Importing this package registers the ``nas_subnet`` model transform used by ``load_model``.
"""

from mobiledl.automl.nas.elastic import OFASupernet, sort_channels
from mobiledl.automl.nas.extract import build_subnet, extract_subnet, recalibrate_bn
from mobiledl.automl.nas.search import Constraints
from mobiledl.automl.nas.space import Arch, SearchSpace, StageSpec, default_space, tiny_space
from mobiledl.automl.nas.store import load_supernet, save_supernet
from mobiledl.automl.nas.train import ShrinkConfig, progressive_shrink

__all__ = [
    "Arch",
    "Constraints",
    "OFASupernet",
    "SearchSpace",
    "ShrinkConfig",
    "StageSpec",
    "build_subnet",
    "default_space",
    "extract_subnet",
    "load_supernet",
    "progressive_shrink",
    "recalibrate_bn",
    "save_supernet",
    "sort_channels",
    "tiny_space",
]
