"""Progress bars: a Jupyter widget where one can be drawn, plain text otherwise."""

from __future__ import annotations

import warnings
from typing import Any


def progress_bar(**kwargs: Any) -> Any:
    """A ``tqdm`` bar (``kwargs`` as for ``tqdm``).

    ``tqdm.auto`` draws a widget in Jupyter but, without ipywidgets installed, warns
    ("IProgress not found") on every bar before falling back to text; here the text
    bar is chosen up front instead.
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(**kwargs)


def import_tqdm_auto_quietly() -> None:
    """Import ``tqdm.auto`` without its "IProgress not found" warning.

    In Jupyter without ipywidgets, ``tqdm.auto`` warns once, when it is first
    imported. segmentation-models-pytorch imports it (through huggingface_hub,
    whose download bars geovision never shows), so without this every notebook
    that builds a model printed the notice. Called before smp is imported.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401
