"""Progress bars: a Jupyter widget where one can be drawn, plain text otherwise."""

from __future__ import annotations

import warnings
from typing import Any


def progress_bar(**kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar (``kwargs`` as for ``tqdm``): a widget in Jupyter with ipywidgets, text otherwise."""
    import_tqdm_auto_quietly()
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def import_tqdm_auto_quietly() -> None:
    """Import ``tqdm.auto`` without its "IProgress not found" warning.

    In Jupyter without ipywidgets, ``tqdm.auto`` warns once, when it is first
    imported, and falls back to text bars. segmentation-models-pytorch imports it
    (through huggingface_hub, whose download bars geovision never shows), so without
    this every notebook that builds a model printed the notice. Called before smp
    is imported (:func:`geovision.models.registry.import_smp`) and before any bar.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401
