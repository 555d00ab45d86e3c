"""The Kubeflow pipeline of lungseg (``pipelines.lungseg_pipeline``) and the operations behind
``lungseg pipeline compile | submit | run-local`` (``pipelines.ops``)."""
