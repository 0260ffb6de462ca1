"""mobiledl: make deep learning models small, fast and trainable on mobile and edge devices.

The package follows the taxonomy of Cai et al., *Enable Deep Learning on Mobile
Devices: Methods, Systems, and Applications* (ACM TODAES 2022). Every method is applied
through one entry point, module in and a new module out::

    from mobiledl import apply, report_of
    from mobiledl.compress.prune import ChannelPruneConfig

    pruned = apply(model, ChannelPruneConfig(macs_ratio=0.5), task)
    report_of(pruned).values["macs_ratio"]

A ``Task`` (``mobiledl.core.task``) supplies data: batches of any structure, a loss, a metric
and an example input; ``TensorTask`` holds in-memory tensors (every built-in task is one).
"""

from mobiledl.core.methods import apply, list_methods, report_of
from mobiledl.core.task import Task, TensorTask
from mobiledl.errors import UserError

__version__ = "0.1.0"
__all__ = ["Task", "TensorTask", "UserError", "__version__", "apply", "list_methods", "report_of"]
