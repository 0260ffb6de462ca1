"""Import every model family so its ``@register_model`` decorators run (``_load_zoo``)."""

from mobiledl.apps.pointcloud import zoo as pointcloud_models  # noqa: F401
from mobiledl.apps.video import models as video_models  # noqa: F401
from mobiledl.models import (  # noqa: F401
    lenet,
    mcunet,
    mobilenet,
    resnet,
    sequence,
    shufflenet,
    squeezenet,
)
