"""The configs, installed as the package ``asyncsgd.conf``.

This folder is the source of the configs; ``setup.py`` maps it to the package
``asyncsgd.conf``, so a regular install carries them inside the wheel and an
editable one reads them from here. Hydra finds them as ``pkg://asyncsgd.conf``
from any directory. See docs/architecture.md ("Where the configs live").
"""
