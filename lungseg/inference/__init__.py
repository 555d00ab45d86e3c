"""Inference: use a trained model on a patient's scan, report the infection burden, serve and export it.

Modules (imported on use, never here):

* :mod:`~lungseg.inference.volumes` — read a NIfTI volume, a DICOM series folder or a folder of
  PNG/TIFF slices with its geometry; apply the intensity rule the model was trained with; write
  masks back in the input's own geometry (NIfTI with the source affine, PNG, DICOM SEG).
* :mod:`~lungseg.inference.predict` — load a model (training folder or MLflow URI) and run batched
  slice inference (``inference_mode``; bf16 + channels_last on CUDA; a progress bar per volume).
* :mod:`~lungseg.inference.burden` — lung / infection volumes in mL, % of lung affected, left/right.
* :mod:`~lungseg.inference.export` — ONNX / TorchScript export with a parity check.

The model side they share — resizing as preprocessing does, probabilities, labels — and the portable
MLflow model live one floor lower, in :mod:`lungseg.artifacts.core` and :mod:`lungseg.artifacts.pyfunc`
(training logs the model without importing inference). See ``docs/inference.md``.
"""
