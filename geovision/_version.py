"""The geovision version, on its own so any module can import it without importing the package's top level."""

from __future__ import annotations

__version__ = "0.1.0"
