"""AutoML (Cai et al. 2022, Sec. 3): neural architecture search in :mod:`mobiledl.automl.nas`,
automated compression (mixed-precision bits) in :mod:`mobiledl.automl.compress`."""
