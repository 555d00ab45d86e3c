"""lungseg: train, track and ship lung CT segmentation models.

Import-light on purpose: ``lungseg --help`` must not import torch, mlflow or kfp.
"""

__version__ = "0.1.0"
