"""Inference: use a trained model on a patient's scan, report the infection burden, serve and export it.

Modules (imported on use, never here: the MLflow model copies :mod:`lungseg.inference.core` and
:mod:`lungseg.inference.pyfunc` into its own code folder, and they must not drag the rest in):

* :mod:`~lungseg.inference.core` — the model side shared by everything below (torch only): resize a
  batch of [0, 1] slices to the model's size exactly as preprocessing does, probabilities, resize
  back, labels.
* :mod:`~lungseg.inference.volumes` — read a NIfTI volume, a DICOM series folder or a folder of
  PNG/TIFF slices with its geometry; apply the intensity rule the model was trained with; write
  masks back in the input's own geometry (NIfTI with the source affine, PNG, DICOM SEG).
* :mod:`~lungseg.inference.predict` — load a model (training folder or MLflow URI) and run batched
  slice inference (``inference_mode``; bf16 + channels_last on CUDA; a progress bar per volume).
* :mod:`~lungseg.inference.burden` — lung / infection volumes in mL, % of lung affected, left/right.
* :mod:`~lungseg.inference.pyfunc` — the portable MLflow model (``log_model``).
* :mod:`~lungseg.inference.export` — ONNX / TorchScript export with a parity check.

See ``docs/inference.md``.
"""
