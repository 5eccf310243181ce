"""Inference backends: one module per backend, each declaring a ``SPEC`` the registry finds.

- ``spec.py``: ``BackendSpec`` (name, precisions with their parity bounds, availability check,
  factory) and the helpers backends share (normalisation, bf16 detection, device resolution).
- ``registry.py``: finds every ``SPEC`` in this package, lists the paths (backend, precision) that
  can run here, and builds one. It imports no backend by name.
- ``torch_backend.py``, ``onnx_backend.py``, ``openvino_backend.py``: the backends. A new backend
  joins by adding a module here with a ``SPEC``; ``auto`` then measures it like the others
  (``moderation/path_choice.py``).
- ``export_graph.py`` and ``artifact_cache.py``: what exporting backends share (the classifier as
  one uint8-in, probabilities-out graph; the on-disk cache of exported files).
"""
