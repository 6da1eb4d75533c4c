"""linterp: linear interpreters of convolutional networks (y = F(x0)·x + r(x0)).

The Python API (docs/api.md) is importable from here, lazily (``import pipeline`` stays light):
``compute_store``, ``svd_store``, ``verify_store``, ``export_site``, ``open_store`` (``pipeline.api``) and
``interpret`` (``pipeline.interpreter``).
"""

_API = {"compute_store": "pipeline.api", "svd_store": "pipeline.api", "verify_store": "pipeline.api",
        "export_site": "pipeline.api", "open_store": "pipeline.api", "interpret": "pipeline.interpreter"}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
