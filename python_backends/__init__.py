"""The project's Python-based Triton backends, one folder each (``<name>/model.py``): thin adapters
over ``coded_serving.runtime``. Installed as ``coded_serving.python_backends``; laid out for a server
by ``coded_serving.deployment.backends``."""
