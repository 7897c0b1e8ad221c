"""Folder put on sys.path / PYTHONPATH on CPU hosts; holds the `sgl_kernel` stand-in (packaged as data)."""
