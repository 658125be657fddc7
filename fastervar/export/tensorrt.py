"""Build a TensorRT plan from one exported ONNX graph, for `fastervar export --tensorrt`.

tensorrt is optional and only imported here when a plan is built; without it every
entry point raises FastervarError with the reason, never ImportError.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FastervarError
from ..runtime.tensorrt_engine import load_tensorrt, take_trt_error, trt_logger
from ..utils.atomic import atomic_path

# How far each symbolic dim of a manifest shape ranges, in multiples of --max-batch:
# "rows" is the batch doubled when classifier-free guidance runs.
_SYMBOLIC_DIMS = {"batch": 1, "rows": 2}


def tensorrt_available() -> str | None:
    """None when plans can be built here, else the one-line reason they cannot."""
    try:
        load_tensorrt()
    except FastervarError as e:
        return str(e)
    return None


def profile_shapes(shape: list[int | str], max_batch: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The smallest and largest shape an input takes: symbolic dims from 1 to their bound."""
    if max_batch < 1:
        raise FastervarError(f"--max-batch must be at least 1, got {max_batch}")
    smallest: list[int] = []
    largest: list[int] = []
    for dim in shape:
        if isinstance(dim, str):
            if dim not in _SYMBOLIC_DIMS:
                raise FastervarError(f"unknown symbolic dimension {dim!r} "
                                     f"(expected one of {', '.join(_SYMBOLIC_DIMS)})")
            smallest.append(1)
            largest.append(_SYMBOLIC_DIMS[dim] * max_batch)
        else:
            smallest.append(int(dim))
            largest.append(int(dim))
    return tuple(smallest), tuple(largest)


def build_plan(onnx_path: Path, plan_path: Path, inputs: list[dict], max_batch: int, fp16: bool,
               workspace_gb: float = 4.0) -> None:
    """Compile `onnx_path` into a TensorRT plan that accepts any batch up to `max_batch`.

    The graph is parsed from its file so external weights beside it resolve. The profile's
    optimum is its maximum: generation runs at the full batch, so kernels are tuned for it.
    TensorRT 11 builds only strongly typed networks and has no FP16 flag; there `fp16`
    changes nothing and the plan's precision is the graph's own.
    """
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    trt = load_tensorrt()
    logger = trt_logger()
    take_trt_error()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [" ".join(parser.get_error(i).desc().split()) for i in range(parser.num_errors)]
        raise FastervarError(f"TensorRT could not parse {onnx_path.name}: "
                             f"{'; '.join(errors) or take_trt_error() or 'no detail logged'}")
    graph_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if graph_inputs != {spec["name"] for spec in inputs}:
        raise FastervarError(f"{onnx_path.name} has inputs {sorted(graph_inputs)}, "
                             f"but the manifest lists {sorted(spec['name'] for spec in inputs)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for spec in inputs:
        smallest, largest = profile_shapes(spec["shape"], max_batch)
        profile.set_shape(spec["name"], smallest, largest, largest)
    if config.add_optimization_profile(profile) < 0:
        raise FastervarError(f"TensorRT rejected the shape profile for {onnx_path.name}: "
                             f"{take_trt_error() or 'no detail logged'}")

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise FastervarError(f"TensorRT could not build a plan from {onnx_path.name}: "
                             f"{take_trt_error() or 'no detail logged'}")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(plan)
