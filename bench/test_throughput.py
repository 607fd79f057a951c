"""Epoch throughput over the grid: device × workload × loader × DataLoader workers (× host memory on CUDA).

Each round times exactly one full training epoch (trainlib's train_one_epoch: forward, backward and Adam step
over the whole training split) after warm-up epochs; the timer synchronises CUDA (bench.support). The rounds of
one workload's cases are interleaved (bench.interleave).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import Any

import pytest
import torch
from torch import nn

from bench.interleave import Case, Interleaver, replay_clock
from bench.support import hardware_name
from trainlib.data import make_loader
from trainlib.engine import train_one_epoch
from trainlib.loader_tuning import label_of, probe_loader_settings, training_step
from trainlib.models import build_model
from trainlib.optim import build_optimizer
from trainlib.workload import build_workload_model

pytestmark = [
    pytest.mark.benchmark(timer=replay_clock),
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),  # more workers than cores, on purpose
]

# Benchmark name -> make_loader's loader argument.
LOADERS = {"torch": "torch", "trainlib": "auto", "auto": "auto"}  # "auto": trainlib's loader, probed settings
NEEDS_CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(), reason=f"CUDA is not available on this machine (torch {torch.__version__})"
)
NUM_FEATURES, NUM_CLASSES, LEARNING_RATE = 40, 10, 1e-3


def grid(workers: list[int]) -> Iterator[tuple[tuple[str, str, str, int, str], str, bool]]:
    """The sensible cases as (values, id, needs CUDA), and per device and workload one num_workers = "auto" case.

    On-the-fly data is not a TensorDataset, so make_loader's 'auto' is torch's DataLoader there: one loader.
    Host memory (pinned, pageable, or the whole dataset resident on the GPU) matters on CUDA only; resident
    needs in-memory tensors, trainlib's loader and no workers.
    """
    for device in ("cpu", "cuda"):
        memories = ("pageable", "pinned", "resident") if device == "cuda" else ("pageable",)
        for workload in ("in_memory", "on_the_fly"):
            for loader in ("torch", "trainlib") if workload == "in_memory" else ("torch",):
                for num_workers in workers:
                    for memory in memories:
                        if memory == "resident" and (workload != "in_memory" or loader != "trainlib" or num_workers):
                            continue
                        case_id = f"{device}-{workload}-{loader}_loader-{num_workers}_workers"
                        if device == "cuda":
                            case_id += f"-{memory}"
                        yield (device, workload, loader, num_workers, memory), case_id, device == "cuda"
            # num_workers = "auto": the probe picks workers, prefetching and pinning; compared with the grid's best.
            yield (device, workload, "auto", "auto", "probed"), f"{device}-{workload}-auto_workers", device == "cuda"


def study_grid(workers: list[int], batch_sizes: list[int]) -> Iterator[tuple[tuple, str, bool]]:
    """The cases of a --config study: device × DataLoader workers × the study's batch sizes, trainlib's loader."""
    for device in ("cpu", "cuda"):
        for batch_size in batch_sizes:
            for num_workers in workers:
                case_id = f"{device}-study-batch_{batch_size}-{num_workers}_workers"
                yield (device, "study", "trainlib", num_workers, "pageable", batch_size), case_id, device == "cuda"
            case_id = f"{device}-study-batch_{batch_size}-auto_workers"
            yield (device, "study", "auto", "auto", "probed", batch_size), case_id, device == "cuda"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize test_epoch_throughput with the grid for --workers (or a --config study's grid)."""
    if metafunc.definition.name != "test_epoch_throughput":
        return
    config = metafunc.config
    study = config.study_workload  # type: ignore[attr-defined]
    if study is None:
        batch_size = config.getoption("--batch-size")
        cases = [
            ((*values, batch_size), case_id, cuda) for values, case_id, cuda in grid(config.getoption("--workers"))
        ]
    else:
        cases = list(study_grid(config.getoption("--workers"), study.batch_sizes))
    metafunc.parametrize(
        "device,workload,loader,num_workers,memory,batch_size",
        [pytest.param(*values, id=case_id, marks=[NEEDS_CUDA] if cuda else []) for values, case_id, cuda in cases],
    )


def interleave_group(device: str, workload: str, batch_size: int, **_: object) -> str:
    """Cases compared with each other: every loader, worker count and device of one workload and batch size."""
    return f"{workload}-batch_{batch_size}"


def build_case(
    fixture: Callable[[str], Any],
    config: pytest.Config,
    device: str,
    workload: str,
    loader: str,
    num_workers: int | str,
    memory: str,
    batch_size: int,
) -> Case:
    """One epoch (cnn1d, or the --config study's model) with Adam over this case's loader, ready to time.

    num_workers "auto" first runs the loader probe (trainlib.loader_tuning) on this workload, then times epochs with
    its pick; the probe's seconds and every candidate's rate go into the record.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine")
    torch.manual_seed(0)
    if workload == "study":
        study, splits = config.study_workload, fixture("study_splits")  # type: ignore[attr-defined]
        dataset, model = splits.train, build_workload_model(study.workload, splits)
        names = {"workload": study.name, "model": study.workload.model, "dataset": study.workload.data}
    else:
        dataset, model = fixture(f"{workload}_train"), build_model("cnn1d", NUM_FEATURES, NUM_CLASSES)
        names = {"workload": workload, "model": "cnn1d", "dataset": "mnist1d"}
    probe: dict[str, object] = {}
    if num_workers == "auto":
        scratch = build_model("cnn1d", NUM_FEATURES, NUM_CLASSES) if workload != "study" else deepcopy(model)
        result = probe_loader_settings(
            dataset, batch_size, torch.device(device), training_step(scratch, torch.device(device))
        )
        settings = result.settings
        num_workers, memory = settings.num_workers, "pinned" if settings.pin_memory else "pageable"
        probe = {"auto_workers": True, "probe_seconds": result.seconds, "probe_pick": label_of(settings)}
        probe["probe_samples_per_second"] = result.samples_per_second
        options = {key: value for key, value in settings.loader_options().items() if key != "num_workers"}
    else:
        options = {"pin_memory": memory == "pinned"}
    train_loader = make_loader(
        dataset,
        batch_size,
        shuffle=True,
        num_workers=num_workers,
        device=device,
        loader=LOADERS[loader],
        resident=memory == "resident",
        seed=0,
        **options,
    )
    model = model.to(device)
    optimizer = build_optimizer("adam", model.parameters(), LEARNING_RATE)
    criterion = nn.CrossEntropyLoss()
    record = {
        "device": device,
        "device_name": hardware_name(device),
        **names,
        "loader": loader,
        "num_workers": num_workers,
        "memory": memory,
        "batch_size": batch_size,
        "dataset_size": len(dataset),
        "torch_threads": torch.get_num_threads(),
        **probe,
    }
    return Case(lambda: train_one_epoch(model, train_loader, criterion, optimizer, device), record)


def test_epoch_throughput(
    benchmark,
    request: pytest.FixtureRequest,
    interleaved: Interleaver,
    device: str,
    workload: str,
    loader: str,
    num_workers: int | str,
    memory: str,
    batch_size: int,
) -> None:
    """Median time of one training epoch for this case, its rounds interleaved with the others of its workload."""
    measured = interleaved.time_case(request, benchmark)
    assert math.isfinite(measured.last_loss), "a diverged epoch must not pass as a fast one"
