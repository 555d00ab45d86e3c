"""The project image every component runs in (built from the repository's Dockerfile).

Only the image NAME is configurable, through ``LUNGSEG_IMAGE`` at compile time (e.g. a private
registry mirror); the committed ``pipelines/lungseg_pipeline.yaml`` is compiled with the default.
"""

import os

DEFAULT_IMAGE = "ghcr.io/lungseg/lungseg:0.1.0"
IMAGE = os.environ.get("LUNGSEG_IMAGE", DEFAULT_IMAGE)
