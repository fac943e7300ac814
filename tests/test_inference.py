"""Running the model: concurrent forward passes (models.inference) and the frozen graph (SegmentationPredictor)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_models import make_config, random_tiles, trained_like_unet

from geovision.errors import ConfigError
from geovision.models.bundle import weights_digest
from geovision.models.config import Normalization
from geovision.models.inference import (
    MAX_CPU_STREAMS,
    InferencePlan,
    InferencePool,
    plan_inference,
)
from geovision.models.registry import build_model
from geovision.models.segmentation import SegmentationPredictor, clear_graph_cache


@pytest.fixture(scope="module")
def unet() -> SegmentationPredictor:
    config, state = trained_like_unet()
    return SegmentationPredictor(config, state, device="cpu", precision="fp32")


# --- the plan ------------------------------------------------------------------------


def test_cpu_plan_shares_the_cores_out() -> None:
    assert plan_inference("cpu", cores=2) == InferencePlan(streams=2, threads=1, batch_size=1)
    assert plan_inference("cpu", cores=1) == InferencePlan(streams=1, threads=1, batch_size=1)
    assert plan_inference("cpu", cores=16) == InferencePlan(streams=MAX_CPU_STREAMS, threads=16 // MAX_CPU_STREAMS,
                                                            batch_size=1)
    assert plan_inference("cpu", cores=8, streams=1, batch_size=4) == InferencePlan(1, 8, 4)


def test_gpu_plan_is_one_stream_of_bigger_batches() -> None:
    plan = plan_inference(torch.device("cuda"))
    assert plan.streams == 1 and plan.threads is None and plan.batch_size == 8
    assert plan_inference("cuda", batch_size=2).batch_size == 2


def test_bad_plan_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        InferencePlan(streams=0, threads=1, batch_size=1)


# --- the pool ------------------------------------------------------------------------


def test_pool_gives_sequential_results_in_order(unet: SegmentationPredictor) -> None:
    batches = [random_tiles((1, 3, 64, 64), seed=s) for s in range(7)]
    expected = [unet.predict(b) for b in batches]
    jobs = [(k, b, None) for k, b in enumerate(batches)]
    jobs.insert(3, ("nothing", None, None))  # a batch with nothing to predict passes through
    with InferencePool(unet, InferencePlan(streams=3, threads=1, batch_size=1)) as pool:
        got = list(pool.map(jobs))
    assert [k for k, _ in got] == [0, 1, 2, "nothing", 3, 4, 5, 6]
    assert got[3][1] is None
    for (_, out), ref in zip([g for g in got if g[0] != "nothing"], expected):
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_pool_sets_and_restores_torch_threads(unet: SegmentationPredictor) -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    class Spy:
        device = unet.device

        def predict(self, tiles, valid):
            seen.append(torch.get_num_threads())
            return tiles

    with InferencePool(Spy(), InferencePlan(streams=2, threads=1, batch_size=1)) as pool:
        assert torch.get_num_threads() == 1
        list(pool.map([(k, np.zeros(1), None) for k in range(4)]))
    assert seen == [1, 1, 1, 1]
    assert torch.get_num_threads() == before


def test_pool_runs_passes_at_the_same_time() -> None:
    """Two streams really overlap: each pass waits until the other has started."""
    barrier = threading.Barrier(2, timeout=10)

    class Rendezvous:
        device = torch.device("cpu")

        def predict(self, tiles, valid):
            barrier.wait()  # would time out if the passes ran one after the other
            return tiles

    with InferencePool(Rendezvous(), InferencePlan(streams=2, threads=1, batch_size=1)) as pool:
        assert len(list(pool.map([(k, np.zeros(1), None) for k in range(4)]))) == 4


def test_pool_error_reaches_the_caller(unet: SegmentationPredictor) -> None:
    pool = InferencePool(unet, InferencePlan(streams=2, threads=1, batch_size=1))
    with pool, pytest.raises(ValueError, match="band"):
        list(pool.map([(0, random_tiles((1, 5, 64, 64)), None)]))  # 5 bands for a 3-band model


def test_pool_outside_its_context_is_refused(unet: SegmentationPredictor) -> None:
    pool = InferencePool(unet, InferencePlan(streams=1, threads=1, batch_size=1))
    with pytest.raises(RuntimeError, match="context manager"):
        list(pool.map([]))


# --- the frozen graph --------------------------------------------------------------

U8 = str(torch.uint8)


@pytest.fixture(autouse=True)
def _no_graphs_from_earlier_tests():
    """Each test traces its own graphs: none kept for the process by an earlier one."""
    clear_graph_cache()
    yield
    clear_graph_cache()


@pytest.mark.parametrize("arch, encoder", [("unet", "resnet18"), ("fpn", "resnet18"), ("deeplabv3plus", "resnet18"),
                                           ("shallow", "none")])
def test_graph_equals_eager(arch: str, encoder: str) -> None:
    params = {"depth": 3, "width": 8} if arch == "shallow" else {}
    config = make_config(arch=arch, encoder=encoder, arch_params=params, n_classes=3)
    torch.manual_seed(1)
    model = build_model(config)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))  # batch-norm statistics, which freezing folds into the convolutions
    state = model.state_dict()
    graph = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    eager = SegmentationPredictor(config, state, device="cpu", precision="fp32", graph=False)
    assert graph.graph and not eager.graph
    for shape in ((1, 3, 64, 64), (2, 3, 96, 64), (1, 3, 64, 64)):  # a new shape is traced anew
        tiles = random_tiles(shape, seed=shape[2])
        np.testing.assert_allclose(graph.predict(tiles), eager.predict(tiles), atol=1e-4)
    assert len(graph._graphs) == 2
    assert all(isinstance(g, torch.jit.ScriptModule) for g in graph._graphs.values())


def test_graph_under_bf16_autocast_is_as_close_to_fp32_as_eager(unet: SegmentationPredictor) -> None:
    """Traced under autocast, the graph keeps autocast's bf16 casts: its error against float32 is eager bf16's.

    Freezing folds batch norms into bf16 convolution weights, so the frozen graph does
    not repeat eager bf16 bit for bit; it must be no further from float32 than eager is.
    """
    config, state = unet.config, unet.model.state_dict()
    graph = SegmentationPredictor(config, state, device="cpu", precision="bf16")
    eager = SegmentationPredictor(config, state, device="cpu", precision="bf16", graph=False)
    fp32 = SegmentationPredictor(config, state, device="cpu", precision="fp32", graph=False)
    assert graph.graph and graph.dtype == torch.bfloat16
    tiles = random_tiles((2, 3, 64, 64), seed=4)
    reference, eager_out = fp32.predict(tiles), eager.predict(tiles)
    # the tracing pass's output is the eager model's
    np.testing.assert_allclose(graph.predict(tiles), eager_out, atol=1e-6)
    assert list(graph._graphs) == [((2, 3, 64, 64), U8)]
    frozen = graph.predict(tiles)  # the frozen graph
    eager_error = np.abs(eager_out - reference)
    frozen_error = np.abs(frozen - reference)
    assert eager_error.max() > 1e-3  # bf16 really ran, in both
    assert frozen_error.max() > 1e-3
    assert frozen_error.max() <= 2 * eager_error.max()
    assert frozen_error.mean() <= 1.5 * eager_error.mean()
    assert (frozen.argmax(1) == reference.argmax(1)).mean() >= 0.99


def test_graph_is_off_on_request(unet: SegmentationPredictor) -> None:
    eager = SegmentationPredictor(unet.config, unet.model.state_dict(), device="cpu", precision="bf16", graph=False)
    eager.predict(random_tiles((1, 3, 64, 64)))
    assert not eager.graph and not eager._graphs


def test_graph_from_several_threads_at_once(unet: SegmentationPredictor) -> None:
    """While one thread traces, the others run eagerly; every result is the same."""
    config, state = unet.config, unet.model.state_dict()
    predictor = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    tiles = random_tiles((1, 3, 64, 64), seed=9)
    reference = SegmentationPredictor(config, state, device="cpu", precision="fp32", graph=False).predict(tiles)
    with InferencePool(predictor, InferencePlan(streams=4, threads=1, batch_size=1)) as pool:
        outs = [o for _, o in pool.map([(k, tiles, None) for k in range(8)])]
    for out in outs:
        np.testing.assert_allclose(out, reference, atol=1e-4)
    assert list(predictor._graphs) == [((1, 3, 64, 64), U8)]


def test_second_predictor_of_the_same_weights_reuses_the_graph(unet: SegmentationPredictor) -> None:
    """A process traces a model once: another predictor of the same weights, precision and device
    (a second ``geovision.predict`` call) takes the first one's frozen graph; other weights or
    another precision trace their own."""
    config, state = unet.config, unet.model.state_dict()
    tiles = random_tiles((1, 3, 64, 64), seed=3)
    first = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    first.predict(tiles)  # traces
    [graph] = first._graphs.values()
    second = SegmentationPredictor(config, {k: v.clone() for k, v in state.items()}, device="cpu", precision="fp32")
    out = second.predict(tiles)
    assert second._graphs[((1, 3, 64, 64), U8)] is graph
    np.testing.assert_array_equal(out, first.predict(tiles))  # the frozen graph's output, bit for bit

    other_state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    assert weights_digest(other_state) != weights_digest(state)
    other = SegmentationPredictor(config, other_state, device="cpu", precision="fp32")
    other.predict(tiles)
    assert other._graphs[((1, 3, 64, 64), U8)] is not graph
    bf16 = SegmentationPredictor(config, state, device="cpu", precision="bf16")
    bf16.predict(tiles)
    assert bf16._graphs[((1, 3, 64, 64), U8)] is not graph

    clear_graph_cache()
    third = SegmentationPredictor(config, state, device="cpu", precision="fp32")
    third.predict(tiles)
    assert third._graphs[((1, 3, 64, 64), U8)] is not graph


def test_predictor_of_an_unchanged_bundle_file_is_kept(tmp_path) -> None:
    """``geovision.predict`` in a loop over rasters builds the model once per bundle file and options."""
    import os

    from models_util import bright_object_bundle

    from geovision.models.bundle import load_bundle
    from geovision.models.factory import clear_shared_predictor, shared_predictor

    path = bright_object_bundle(tmp_path / "m.safetensors")
    config, state = load_bundle(path)
    first = shared_predictor(path, config, state, device="cpu", precision="fp32")
    assert shared_predictor(path, *load_bundle(path), device="cpu", precision="fp32") is first
    assert shared_predictor(path, config, state, device="cpu", precision="bf16") is not first  # other options

    fp32 = shared_predictor(path, config, state, device="cpu", precision="fp32")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file rewritten
    rebuilt = shared_predictor(path, *load_bundle(path), device="cpu", precision="fp32")
    assert rebuilt is not fp32
    tiles = random_tiles((1, 3, 64, 64), seed=5)
    np.testing.assert_array_equal(rebuilt.predict(tiles), fp32.predict(tiles))
    clear_shared_predictor()
    assert shared_predictor(path, config, state, device="cpu", precision="fp32") is not rebuilt
    clear_shared_predictor()


def test_read_batches_split_into_passes_in_grid_order() -> None:
    """predict reads several tiles per Dask task and splits them into forward passes, skipped tiles in place."""
    from geovision.engine.reading import passes
    from geovision.tiling.grid import TileGrid
    from geovision.tiling.reader import TileData

    tiles = TileGrid(64, 160, 32, 0).tiles[:5]
    skipped = [tiles[1], tiles[4]]
    read = [TileData(t, np.zeros((1, 32, 32)), np.ones((32, 32), bool)) for t in tiles if t not in skipped]
    parts = list(passes(tiles, read, skipped, 2))
    assert [[t.index for t in p] for p, _, _ in parts] == [[t.index for t in tiles[:3]], [t.index for t in tiles[3:]]]
    assert [[d.tile.index for d in r] for _, r, _ in parts] == [[tiles[0].index, tiles[2].index], [tiles[3].index]]
    assert [[t.index for t in s] for _, _, s in parts] == [[tiles[1].index], [tiles[4].index]]
    # every tile skipped: one part with nothing to read
    assert [(len(p), len(r), len(s)) for p, r, s in passes(tiles, [], tiles, 2)] == [(5, 0, 5)]


def test_local_reader_cluster_is_quiet_and_private() -> None:
    """predict's in-process Dask cluster: no stack profiler, slow monitors, no HTTP server on Dask's :8787."""
    from geovision.tiling.stream import local_client, stream

    client = local_client(2)
    try:
        scheduler = client.cluster.scheduler
        worker = next(iter(client.cluster.workers.values()))
        assert not {"profile", "profile-cycle"} & set(worker.periodic_callbacks)
        bound = [s.getsockname() for s in scheduler.http_server._sockets.values()]
        assert bound and all(addr[0] == "127.0.0.1" and addr[1] != 8787 for addr in bound)
        assert [r for _, r in stream(client, sum, [[1, 2], [3]], prefetch=2)] == [3, 3]
    finally:
        client.close()
        client.cluster.close()


def reference_probabilities(predictor: SegmentationPredictor, tiles: np.ndarray,
                            valid: np.ndarray | None) -> np.ndarray:
    """What a pass must give: numpy's normalisation, the eager model in float32, softmax."""
    x = torch.from_numpy(predictor.normalize(tiles, valid))
    with torch.inference_mode():
        return torch.softmax(predictor.model(x).float(), dim=1).numpy()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32])
@pytest.mark.parametrize("normalization", [
    Normalization(method="meanstd", mean=[90.0, 100.0, 110.0], std=[40.0, 50.0, 60.0]),
    Normalization(method="percentile", low=[20.0, 30.0, 40.0], high=[200.0, 210.0, 220.0]),
    Normalization(method="none"),
], ids=["meanstd", "percentile", "none"])
@pytest.mark.parametrize("graph", [True, False], ids=["graph", "eager"])
def test_pass_normalises_on_the_device_as_numpy_does(dtype, normalization: Normalization, graph: bool) -> None:
    """The pass takes raw tiles and the validity mask: invalid pixels (masked, or NaN in float
    tiles) are set to the normalisation's centre, then scaled, exactly as the numpy normaliser
    does, for every input dtype; tiles of another dtype get a graph of their own."""
    config = make_config(normalization=normalization, arch_params={"depth": 2, "width": 8})
    torch.manual_seed(2)
    predictor = SegmentationPredictor(config, build_model(config).state_dict(), device="cpu", precision="fp32",
                                      graph=graph)
    rng = np.random.default_rng(5)
    tiles = rng.integers(0, 250, size=(2, 3, 40, 48)).astype(dtype)
    if np.dtype(dtype).kind == "f":
        tiles[0, 1, 5:9, 5:9] = np.nan
    valid = rng.random((2, 40, 48)) > 0.2
    expected = reference_probabilities(predictor, tiles, valid)
    for _ in range(3):  # eager or tracing, then the frozen graph twice
        np.testing.assert_allclose(predictor.predict(tiles, valid), expected, atol=1e-5)
    np.testing.assert_allclose(predictor.predict(tiles), reference_probabilities(predictor, tiles, None), atol=1e-5)
    if graph:
        assert list(predictor._graphs) == [((2, 3, 40, 48), str(torch.from_numpy(tiles[:0]).dtype))
                                           if dtype != np.uint16 else ((2, 3, 40, 48), "torch.int32")]
        other = tiles.astype(np.float64)
        np.testing.assert_allclose(predictor.predict(other, valid), expected, atol=1e-5)
        assert len(predictor._graphs) == 2
