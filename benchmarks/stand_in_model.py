"""predict_throughput beside a faster model than this CPU runs: a stand-in for the model.

``efficiency`` depends on how fast the model is against everything else ``predict`` does
(reading, stitching, vectorising, writing): the same stitching weighs about six times as
much beside a bf16 U-Net-ResNet18 on an AVX512-BF16 CPU as beside the fp32 one on an
AVX2 CPU. To measure the pipeline for a fast model on a machine whose model is slow,
this runs ``predict_throughput`` with a stand-in for ``SegmentationPredictor.predict``:

- it returns, for each tile, the real model's output for that tile (recorded once with
  the real model, kept as uint16 in ``<workdir>/stand_in_outputs.npz``), so stitching,
  vectorising and writing see exactly the real run's polygons;
- in one call into TorchScript, which lets go of the GIL for all of it as the real
  pass's frozen graph does, it normalises the tiles as the real pass does and computes
  ``--matmuls`` products of two 1024 x 1024 float32 matrices per tile (about 37 ms each
  on one core of a 2 vCPU AMD EPYC with AVX2, so 8 are about 0.3 s: what a bf16 pass of
  a 512 px tile takes on an AVX512-BF16 AMD EPYC, scaled by how much slower the AVX2 one
  runs the stitching).

``model_only_s`` and ``end_to_end_s`` are both measured with the stand-in, as
``predict_throughput`` measures them. Calibration on the AVX2 EPYC (2026-12-01): with 8
products per tile, the code the AVX512-BF16 EPYC measured at efficiency 0.698 (4096²)
gave 0.68-0.78 here; the figure is an estimate for such a machine, not a measurement on
it (docs/performance.md).

    python benchmarks/stand_in_model.py --size 4096 --matmuls 8 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import predict_throughput as pt  # noqa: E402
import torch  # noqa: E402


def _key(tile: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(tile).tobytes(), digest_size=16).hexdigest()


def record_outputs(raster: Path, bundle: Path, work: Path, tile: int, overlap: int) -> dict[str, np.ndarray]:
    """The real model's probabilities per tile (by a digest of the tile's pixels), as uint16."""
    from geovision.models.segmentation import SegmentationPredictor
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import open_raster, read_tiles

    cache = work / "stand_in_outputs.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    predictor = SegmentationPredictor.from_bundle(bundle)
    info = open_raster(str(raster), predictor.config.bands, predictor.config.in_channels)
    outputs = {}
    for t in TileGrid(info.height, info.width, tile, overlap).tiles:
        read, _ = read_tiles(info, [t], tile)
        for r in read:
            probs = predictor.predict(r.data[None], r.valid[None])[0]
            outputs[_key(r.data)] = np.rint(probs * 65535).astype(np.uint16)
    np.savez(cache, **outputs)
    return outputs


def _stand_in_pass(tiles: torch.Tensor, valid: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
                   centre: torch.Tensor, a: torch.Tensor, b: torch.Tensor, matmuls: int,
                   recorded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One stand-in pass, compiled by TorchScript: the real pass's normalisation, ``matmuls`` products,
    and the recorded probabilities (uint16 seen as int16) as float32."""
    x = tiles.float()
    invalid = torch.logical_or(~torch.isfinite(x), ~valid.unsqueeze(1))
    x = (torch.where(invalid, centre, x) - offset) * scale
    c = a
    for _ in range(matmuls):  # each product takes the last one's (TorchScript would merge equal ones)
        c = torch.mm(c, b)
    probs = (recorded.to(torch.int32) & 65535).float() * (1.0 / 65535)
    return probs, x, c


def install_stand_in(outputs: dict[str, np.ndarray], matmuls: int) -> None:
    """Replace ``SegmentationPredictor.predict`` in this process by the stand-in.

    Like the real pass (one call into a frozen TorchScript graph that normalises the raw
    tiles, runs the model and takes the softmax), a stand-in pass is one call into
    compiled code that lets go of Python's GIL for all of its work: the same
    normalisation, ``matmuls`` products per tile, and the recorded outputs turned to
    float32.
    """
    from geovision.models.segmentation import SegmentationPredictor, _torch_readable

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, but still what frees the GIL for a whole call
        compiled = torch.jit.script(_stand_in_pass)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024) / 32  # b keeps the products' size steady

    def predict(self, tiles: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        tiles, valid = self.normalizer.check(tiles, valid)
        if valid is None:
            valid = np.ones((tiles.shape[0], *tiles.shape[2:]), dtype=bool)
        norm = self._pass  # the real pass's normalisation tensors (CPU)
        recorded = np.stack([outputs[_key(t)] for t in tiles]).view(np.int16)
        with torch.inference_mode():
            probs, _, _ = compiled(torch.from_numpy(np.ascontiguousarray(_torch_readable(tiles))),
                                   torch.from_numpy(valid), norm.offset, norm.scale, norm.centre, a, b,
                                   matmuls * len(tiles), torch.from_numpy(recorded))
            return probs.numpy()

    SegmentationPredictor.predict = predict


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="synthetic raster edge in pixels")
    parser.add_argument("--raster", type=Path, help="a real raster instead (with --bundle)")
    parser.add_argument("--bundle", type=Path, help="default: an untrained U-Net-ResNet18, seed 0")
    parser.add_argument("--matmuls", type=int, default=8, help="1024² float32 matrix products per tile")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gv-stand-in-"))
    work.mkdir(parents=True, exist_ok=True)
    raster = args.raster or work / f"synthetic_{args.size}.tif"
    if not raster.exists():
        pt.write_synthetic(raster, args.size)
    bundle = args.bundle or work / "unet_resnet18.safetensors"
    if not bundle.exists():
        pt.untrained_bundle(bundle)
    outputs = record_outputs(raster, bundle, work, 512, 64)
    install_stand_in(outputs, args.matmuls)
    with contextlib.redirect_stdout(io.StringIO()):
        record = pt.main(["--raster", str(raster), "--bundle", str(bundle), "--repeat", str(args.repeat),
                          "--workdir", str(work)])
    record["stand_in"] = {"matmuls_per_tile": args.matmuls, "recorded_tiles": len(outputs)}
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
