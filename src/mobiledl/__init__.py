"""mobiledl: make deep learning models small, fast and trainable on mobile and edge devices.

The package follows the taxonomy of Cai et al., *Enable Deep Learning on Mobile
Devices: Methods, Systems, and Applications* (ACM TODAES 2022).
"""

from mobiledl.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
