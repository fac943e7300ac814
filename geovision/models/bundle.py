"""Model bundles: one ``.safetensors`` file with the weights and the whole configuration.

A bundle is a single safetensors file. Its tensors are the model's
``state_dict``; its header metadata (a ``dict[str, str]``) holds:

``"geovision"``
    the :class:`~geovision.models.config.BundleConfig` as JSON: architecture,
    encoder, bands, band names, normalisation, classes and colours, tile size,
    ground resolution, provenance.
``"geovision_format"``
    the bundle format version (:data:`~geovision.models.config.FORMAT_VERSION`), so a future geovision can
    tell old bundles from new ones and an old geovision can refuse new ones.
``"geovision_weights_sha256"``
    sha256 over every tensor in name order: its name, dtype, shape and bytes as
    stored (:func:`weights_digest`), so a changed or corrupted weight is refused
    when the weights are loaded.
``"geovision_sha256"``
    sha256 over the config JSON, every tensor's name, dtype and shape, and the
    weights' sha256 (:func:`bundle_digest`): it covers the whole bundle, and the
    header alone can be checked without reading the weights, so a hand-edited
    header is refused on reading.

Format 1 had no weights digest (its sha256 covered the config and the tensor
names and shapes only), so edited weights loaded silently. Format-1 bundles are
refused with the command that re-saves them in the current format
(:func:`resave_bundle`).

Reading uses safetensors only, which stores raw tensors and no code, so a
bundle from an untrusted source cannot run anything when loaded.
:func:`read_config` reads the header alone (no tensor data, no torch import),
which makes ``geovision model info`` fast. What the configuration may hold, and
its checks, is :mod:`geovision.models.config`'s; building the model a bundle
describes is :mod:`geovision.models.registry`'s; this module only reads and writes files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pydantic import ValidationError

from geovision._version import __version__
from geovision.errors import BundleError, BundleVersionError
from geovision.models.config import FORMAT_VERSION, BundleConfig, format_validation_error

if TYPE_CHECKING:
    import torch

__all__ = [
    "SUPPORTED_FORMAT_VERSIONS",
    "UPGRADABLE_FORMAT_VERSIONS",
    "TensorEntry",
    "bundle_digest",
    "load_bundle",
    "load_bundle_bytes",
    "read_config",
    "resave_bundle",
    "save_bundle",
    "weights_digest",
]

SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (2,)
"""The bundle formats this geovision reads."""

UPGRADABLE_FORMAT_VERSIONS: tuple[int, ...] = (1,)
"""Older formats that only :func:`resave_bundle` reads, to write them in the current format."""

META_CONFIG = "geovision"
META_FORMAT = "geovision_format"
META_WEIGHTS_SHA256 = "geovision_weights_sha256"
META_SHA256 = "geovision_sha256"

_INIT_HINT = "create one with `geovision model init` (or geovision.models.registry.init_bundle / save_bundle)"
_UPGRADE_HINT = (
    "re-save it in the current format: `geovision model upgrade OLD.safetensors --out NEW.safetensors` "
    "(in Python: geovision.models.bundle.resave_bundle(OLD, NEW))"
)


# --- integrity ----------------------------------------------------------------------


class TensorEntry(NamedTuple):
    """One tensor as a safetensors header lists it.

    Attributes:
        dtype: safetensors dtype code, e.g. ``"F32"``, ``"BF16"``, ``"I64"``.
        shape: the tensor's shape.
        begin: offset of its first byte in the data buffer (after the header).
        end: offset just past its last byte in the data buffer.
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


#: torch dtype name -> safetensors dtype code (safetensors' own table, by name so no torch is needed)
_DTYPE_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "uint64": "U64", "uint32": "U32", "uint16": "U16",
    "float8_e4m3fn": "F8_E4M3", "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2": "F8_E5M2",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "complex64": "C64",
}


def _tensor_record(name: str, dtype: str, shape: Sequence[int], nbytes: int) -> bytes:
    """What the weights digest takes before a tensor's bytes: one JSON line, so no two tensors read alike."""
    return json.dumps([name, dtype, [int(d) for d in shape], nbytes]).encode("utf-8") + b"\n"


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over the tensors in name order: name, dtype, shape and bytes as a bundle stores them.

    For the tensors of a saved bundle this is its ``"geovision_weights_sha256"``:
    the bytes are the little-endian, row-major values safetensors writes.

    Args:
        state_dict: ``name -> tensor`` (any device, any layout in memory).

    Raises:
        BundleError: a tensor's dtype cannot be stored in a bundle.
    """
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        code = _DTYPE_CODES.get(str(tensor.dtype).removeprefix("torch."))
        if code is None:
            raise BundleError(
                f"tensor {name!r} has dtype {tensor.dtype}, which a bundle cannot store; "
                f"use one of {', '.join(sorted(_DTYPE_CODES))}"
            )
        raw = tensor.reshape(-1).view(torch.uint8)
        if sys.byteorder == "big" and tensor.element_size() > 1:  # bundles store little-endian values
            raw = raw.reshape(-1, tensor.element_size()).flip(1).reshape(-1)
        data = raw.numpy()
        h.update(_tensor_record(name, code, tuple(tensor.shape), data.nbytes))
        h.update(data.data)
    return h.hexdigest()


def _buffer_digest(entries: Mapping[str, TensorEntry], buffer: memoryview) -> str:
    """:func:`weights_digest` of a bundle's tensors from its data buffer, bytes as stored."""
    h = hashlib.sha256()
    for name in sorted(entries):
        entry = entries[name]
        h.update(_tensor_record(name, entry.dtype, entry.shape, entry.end - entry.begin))
        h.update(buffer[entry.begin : entry.end])
    return h.hexdigest()


def bundle_digest(config_json: str, tensors: Mapping[str, tuple[str, Sequence[int]]], weights_sha256: str) -> str:
    """sha256 (hex) over the whole bundle, computable from its header alone.

    Hashes the exact config JSON text, every tensor's name, dtype and shape in name
    order, and the weights' sha256 (:func:`weights_digest`). Editing the config,
    the tensor layout or the recorded weights digest changes it; editing a weight
    value changes the weights digest, which the loaders check against the data.

    Args:
        config_json: the text stored under the ``"geovision"`` header key.
        tensors: tensor name -> ``(dtype code, shape)``, e.g. ``("F32", (16, 3, 3, 3))``.
        weights_sha256: the ``"geovision_weights_sha256"`` header value.
    """
    h = hashlib.sha256()
    h.update(config_json.encode("utf-8") + b"\n")
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        h.update(json.dumps([name, dtype, [int(d) for d in shape]]).encode("utf-8") + b"\n")
    h.update(weights_sha256.encode("ascii", errors="replace"))
    return h.hexdigest()


def _format1_digest(config_json: str, shapes: Mapping[str, Sequence[int]]) -> str:
    """The sha256 of format 1: the config JSON and the sorted tensor names and shapes, not the values."""
    h = hashlib.sha256()
    h.update(config_json.encode("utf-8"))
    for name in sorted(shapes):
        h.update(b"\x00" + name.encode("utf-8") + b"\x00" + ",".join(str(int(d)) for d in shapes[name]).encode())
    return h.hexdigest()


def _config_json(path: Path, metadata: Mapping[str, str]) -> str:
    config_json = metadata.get(META_CONFIG)
    if config_json is None:
        raise BundleError(
            f"{path} is a safetensors file but not a geovision bundle: its header has no "
            f"{META_CONFIG!r} metadata (keys found: {sorted(metadata) or 'none'}). To use these weights, {_INIT_HINT}."
        )
    return config_json


def _format_version(path: Path, metadata: Mapping[str, str], *, upgradable: bool = False) -> int:
    """The bundle's format version; a format this geovision cannot read raises (an old one with the fix)."""
    raw_version = metadata.get(META_FORMAT)
    try:
        version = int(raw_version) if raw_version is not None else None
    except ValueError:
        version = None
    if version is not None and version in SUPPORTED_FORMAT_VERSIONS:
        return version
    if version is not None and version in UPGRADABLE_FORMAT_VERSIONS:
        if upgradable:
            return version
        raise BundleVersionError(
            f"{path} is a bundle in format {version}, whose checksum does not cover the weight values, so a "
            f"changed or corrupted weight would go unnoticed; this geovision ({__version__}) reads format "
            f"{_supported()} only. To use it, {_UPGRADE_HINT}."
        )
    raise BundleVersionError(
        f"{path} uses bundle format version {raw_version!r}; this geovision ({__version__}) reads "
        f"format version(s) {_supported()}. Upgrade geovision to read it."
    )


def _supported() -> str:
    return ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)


def _header_modified(path: Path, stored: str | None, expected: str) -> BundleError:
    return BundleError(
        f"{path}: the bundle header was modified after the bundle was saved (its {META_SHA256} "
        f"{stored!r} does not match the configuration and tensors, expected {expected[:12]}...). "
        "Do not edit bundles by hand: read the config with read_config, change it with "
        "config.model_copy(update=...) and write a new bundle with save_bundle."
    )


def _parse_config(path: Path, config_json: str, version: int) -> BundleConfig:
    """The checked :class:`BundleConfig` of a header whose digest is verified (format ``version``)."""
    try:
        raw = json.loads(config_json)
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{path}: the {META_CONFIG!r} header is not valid JSON ({exc}); re-export the bundle."
        ) from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: the {META_CONFIG!r} header must be a JSON object, got {type(raw).__name__}")
    config_version = raw.get("format_version", version)
    if config_version != version:
        raise BundleVersionError(
            f"{path}: the config says format_version {config_version!r} but the header says {version}; "
            f"this geovision ({__version__}) reads format version(s) {_supported()}. "
            "Upgrade geovision or re-export the bundle."
        )
    raw["format_version"] = FORMAT_VERSION  # an upgraded format-1 config; otherwise unchanged
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(
            f"{path} has an invalid geovision configuration:\n{format_validation_error(exc)}\n"
            "Fix these values where the bundle was made and export it again."
        ) from None


def _parse_header(path: Path, metadata: Mapping[str, str] | None, tensors: Mapping[str, tuple[str, Sequence[int]]],
                  ) -> BundleConfig:
    """Check a current-format bundle header (format, sha256 of the whole bundle) and read its configuration.

    The weight values are not read here: :func:`_check_weights` compares them with the
    header's weights digest, which the checked sha256 covers.
    """
    metadata = metadata or {}
    config_json = _config_json(path, metadata)
    version = _format_version(path, metadata)
    expected = bundle_digest(config_json, tensors, metadata.get(META_WEIGHTS_SHA256, ""))
    stored = metadata.get(META_SHA256)
    if stored != expected:
        raise _header_modified(path, stored, expected)
    return _parse_config(path, config_json, version)


def _check_weights(path: Path, layout: _Layout, data: bytes) -> None:
    """Compare the weights' bytes with the digest the (checked) header records."""
    stored = layout.metadata.get(META_WEIGHTS_SHA256, "")
    actual = _buffer_digest(layout.entries, memoryview(data)[layout.data_start :])
    if actual != stored:
        raise BundleError(
            f"{path}: the weights were modified or corrupted after the bundle was saved (their sha256 is "
            f"{actual[:12]}..., the header records {stored[:12]}...). Do not use this file: export or train "
            "the bundle again, or copy it again from where it came from."
        )


def _open_error(path: Path, exc: Exception) -> BundleError:
    if isinstance(exc, FileNotFoundError):
        return BundleError(f"model bundle {path} does not exist; check the path, or {_INIT_HINT}")
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return BundleError(f"model bundle {path} is a folder; give the path of the .safetensors file inside it")
    if isinstance(exc, PermissionError):
        return BundleError(f"cannot read model bundle {path}: permission denied; check the file's permissions")
    if isinstance(exc, OSError):
        return BundleError(f"cannot read model bundle {path}: {exc}")
    return BundleError(
        f"{path} is not a readable .safetensors model bundle ({exc}); it may be truncated or not a "
        "bundle at all. Copy or download it again, or " + _INIT_HINT + "."
    )


# --- reading and writing ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """A safetensors file's header: its metadata, its tensors and where their data starts in the file."""

    metadata: dict[str, str]
    entries: dict[str, TensorEntry]
    data_start: int

    @property
    def tensors(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """name -> ``(dtype code, shape)``, as :func:`bundle_digest` takes them."""
        return {name: (e.dtype, e.shape) for name, e in self.entries.items()}


def _layout(data: bytes) -> _Layout:
    """The header of safetensors bytes that safetensors itself has already read successfully."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__", None) or {}
    entries = {
        name: TensorEntry(str(v["dtype"]), tuple(int(d) for d in v["shape"]), int(v["data_offsets"][0]),
                          int(v["data_offsets"][1]))
        for name, v in header.items()
    }
    return _Layout({str(k): str(v) for k, v in metadata.items()}, entries, 8 + size)


def _deserialize(path: Path, data: bytes) -> tuple[_Layout, dict[str, torch.Tensor]]:
    """The layout and tensors of safetensors bytes (safetensors checks the layout: offsets, sizes, shapes)."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        layout = _layout(data)
    except Exception as exc:  # safetensors raises its own SafetensorError on a broken layout
        raise _open_error(path, exc) from exc
    return layout, {name: tensors[name] for name in sorted(tensors)}


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _open_error(path, exc) from exc


def read_config(path: str | os.PathLike[str]) -> BundleConfig:
    """Read and check a bundle's configuration from its header, without loading weights.

    Only the header is read (no tensor data, no torch import), so this is fast
    even for large bundles. The header's sha256 and format version are checked; the
    weight values are not (:func:`load_bundle` checks them).

    Args:
        path: the bundle's ``.safetensors`` file.

    Raises:
        BundleError: the file is missing, unreadable, truncated, not a geovision
            bundle, has been hand-edited, or holds an invalid configuration.
        BundleVersionError: the bundle's format version is not supported (an old
            format's message says how to re-save it).
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata()
            tensors = {}
            for name in f.keys():
                piece = f.get_slice(name)
                tensors[name] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
    except Exception as exc:  # safetensors raises its own SafetensorError, FileNotFoundError or OSError
        raise _open_error(path, exc) from exc
    return _parse_header(path, metadata, tensors)


def load_bundle(path: str | os.PathLike[str]) -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """Read a bundle: its checked configuration and its checked weights (on the CPU).

    Uses safetensors only (raw tensors, no code is executed). Besides the header
    (:func:`read_config`), every weight byte is checked against the header's
    digest. Whether the weights fit the
    architecture is checked when they are loaded into the model
    (:func:`geovision.models.registry.load_weights`).

    Args:
        path: the bundle's ``.safetensors`` file.

    Returns:
        ``(config, state_dict)``, the tensors in name order.

    Raises:
        BundleError: as :func:`read_config`, or the weights were modified or corrupted.
        BundleVersionError: the bundle's format version is not supported.
    """
    path = Path(path)
    return _load(path, _read_file(path))


def load_bundle_bytes(data: bytes, name: str = "<bundle bytes>") -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    """:func:`load_bundle` for a bundle held in memory (e.g. sent to Dask workers as raw bytes).

    The same checks apply; ``name`` stands for the file in error messages.
    """
    return _load(Path(name), data)


def _load(path: Path, data: bytes) -> tuple[BundleConfig, dict[str, torch.Tensor]]:
    layout, tensors = _deserialize(path, data)
    config = _parse_header(path, layout.metadata, layout.tensors)
    _check_weights(path, layout, data)
    return config, tensors


def save_bundle(
    path: str | os.PathLike[str], config: BundleConfig, state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Write a bundle atomically: a temporary file in the same folder, then ``os.replace``.

    A reader never sees a half-written bundle, and a failed write leaves any
    existing file at ``path`` untouched. Tensors are copied to contiguous CPU
    memory first (safetensors refuses tensors that share storage). The header
    records the weights' digest and the whole bundle's (see the module docstring).

    Args:
        path: the ``.safetensors`` file to write (replaced if it exists).
        config: the configuration to store in the header.
        state_dict: the model's weights, ``name -> tensor``.

    Raises:
        BundleError: the folder does not exist, the path is a folder, a value is not
            a tensor (or of a dtype a bundle cannot store), or writing failed.
        BundleVersionError: ``config.format_version`` is not the one this geovision writes.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if config.format_version != FORMAT_VERSION:
        raise BundleVersionError(
            f"cannot write {path} with format_version {config.format_version}; this geovision writes "
            f"format {FORMAT_VERSION}. Use config.model_copy(update={{'format_version': {FORMAT_VERSION}}})."
        )
    if path.is_dir():
        raise BundleError(
            f"cannot write bundle {path}: it is a folder; give a file name such as {path / 'model.safetensors'}"
        )
    if not path.parent.is_dir():
        raise BundleError(f"cannot write bundle {path}: the folder {path.parent} does not exist; create it first")

    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise BundleError(
                f"cannot write bundle {path}: state_dict entry {name!r} is a {type(tensor).__name__}, "
                "expected str -> torch.Tensor (pass model.state_dict())"
            )
        tensors[name] = tensor.detach().to("cpu").contiguous().clone()

    config_json = config.model_dump_json()
    weights_sha256 = weights_digest(tensors)
    layout = {k: (_DTYPE_CODES[str(v.dtype).removeprefix("torch.")], tuple(v.shape)) for k, v in tensors.items()}
    metadata = {
        META_CONFIG: config_json,
        META_FORMAT: str(FORMAT_VERSION),
        META_WEIGHTS_SHA256: weights_sha256,
        META_SHA256: bundle_digest(config_json, layout, weights_sha256),
    }
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {path}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def resave_bundle(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> BundleConfig:
    """Write the bundle ``src`` again as ``dst``, in the current format (``dst`` may be ``src``).

    The way to keep using a format-1 bundle, whose sha256 covered the configuration
    and the tensor names and shapes but not the weight values: that sha256 is checked
    first, so a hand-edited header is still refused (edited weights could not be
    told, which is why format 1 is no longer read). A current bundle is checked in
    full and written again. The weights are copied bit for bit and the
    configuration is kept, but for its ``format_version``.

    Args:
        src: the bundle to read.
        dst: the ``.safetensors`` file to write (replaced if it exists, atomically).

    Returns:
        The configuration written.

    Raises:
        BundleError: ``src`` is missing, unreadable, not a bundle or was modified, or
            ``dst`` cannot be written.
        BundleVersionError: ``src`` is of a format this geovision does not know.
    """
    src_path = Path(src)
    data = _read_file(src_path)
    layout, tensors = _deserialize(src_path, data)
    config_json = _config_json(src_path, layout.metadata)
    version = _format_version(src_path, layout.metadata, upgradable=True)
    if version in SUPPORTED_FORMAT_VERSIONS:
        config = _parse_header(src_path, layout.metadata, layout.tensors)
        _check_weights(src_path, layout, data)
    else:
        expected = _format1_digest(config_json, {name: e.shape for name, e in layout.entries.items()})
        stored = layout.metadata.get(META_SHA256)
        if stored != expected:
            raise _header_modified(src_path, stored, expected)
        config = _parse_config(src_path, config_json, version)
    save_bundle(dst, config, tensors)
    return config
