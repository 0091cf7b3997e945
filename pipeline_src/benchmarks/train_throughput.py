"""Benchmark: training throughput of the phase runner against a minimal hand-written PyTorch loop.

    python -m pipeline_src bench-train --recipe config/models/kpac.yaml --phase 1 --manifest M --patches P
        [--steps 50] [--warmup 5] [--repeats 3] [--out data/benchmarks/train_throughput.json]
        [--device auto|cpu|cuda] [--batch-size B] [--crop C] [--preset P] [--option O] [--threads T]

Three arms train the same recipe phase, in one process, alternating within each repeat (these machines are
noisy, so every ratio compares runs made seconds apart):
  runner_bare        `run_phase` (tracking off, fresh temporary folder, restart) with the phase's length set to
                     warmup + steps and its log / validation / checkpoint / image intervals set beyond the run:
                     the runner's per-step work only (lr per step, loss terms read back, finiteness check,
                     sampler, a DataLoader per epoch);
  plain              a plain `for` loop: the same model built under the same seed, the same training set (the
                     phase's sampling, crop, flips), batch size, optimiser, loss and precision (AMP and
                     channels-last on CUDA, as the runner), a shuffled DataLoader with the phase's workers, no
                     lr schedule, no logging;
  runner_configured  `run_phase` with the phase's intervals as configured: adds the periodic log lines,
                     validations, checkpoint writes and sample images that fall inside the timed window (their
                     counts are reported; choose --steps >= the largest interval to include each at least once).
A phase that starts from the previous phase's weights starts from scratch here: throughput does not depend on
the starting weights. MLflow logging is not measured (tracking is off).

Timing: torch's global optimizer post-step hook marks the end of optimizer step `warmup` and of step
`warmup + steps` (synchronising CUDA at both marks only), so the window holds exactly `steps` steps of each
arm and excludes process start, imports, setup, warm-up and the runner's end-of-phase work (final validation,
final.pt). steps/s and samples/s are medians over repeats; the overhead ratio is the runner's time per step
over the plain loop's (1.10 = the runner takes 10 % longer per step), the median of the per-repeat ratios with
their min and max.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pipeline_src.errors import PipelineError

# Run in this order within each repeat. runner_bare goes first: its end-of-phase validation, checkpoint and
# sample image (outside its window) do the runner's lazy imports before runner_configured times any of them.
ARMS = ("runner_bare", "plain", "runner_configured")
INTERVAL_KEYS = ("log_every", "val_every", "ckpt_every", "image_every")
# What the runner uses when a phase omits an interval (the `phase.get(key, default)` calls in runner.py).
EVENT_NAMES = {"log_every": "log_lines", "val_every": "validations", "ckpt_every": "checkpoints",
               "image_every": "sample_images"}


class BenchArgumentError(PipelineError, ValueError):
    """A bad command-line value; the message names the option, the value and what is accepted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, type=Path, help="config/models/<recipe>.yaml")
    parser.add_argument("--phase", required=True, type=int, help="1-based phase number in the recipe")
    parser.add_argument("--manifest", required=True, type=Path, help="manifest written by `index`")
    parser.add_argument("--patches", required=True, type=Path, help="patch folder written by `patches`")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each arm (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("data/benchmarks/train_throughput.json"),
                        help="results JSON (default: %(default)s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, help="override the phase's batch size (both arms)")
    parser.add_argument("--crop", type=int, help="override the phase's crop (both arms)")
    parser.add_argument("--preset", help="smoke | default | paper (default: config/config.yaml's preset)")
    parser.add_argument("--option", help="a named option of the recipe, e.g. released_code")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument("--weights-dir", type=Path, default=Path("data/weights"),
                        help="pretrained weights for the perceptual loss (default: %(default)s)")
    parser.add_argument("--scratch", type=Path,
                        help="folder for the runner's temporary run folders (default: beside --out)")


def run(args: argparse.Namespace) -> int:
    try:
        check_counts(args.steps, args.warmup, args.repeats, args.batch_size, args.crop, args.threads)
        check_single_process()
        recipe = load_phase_recipe(args.recipe, args.phase, args.preset, args.option)
        result = benchmark(recipe, args.recipe.stem, args.phase, args.manifest, args.patches, steps=args.steps,
                           warmup=args.warmup, repeats=args.repeats, device=args.device,
                           batch_size=args.batch_size, crop=args.crop, seed=args.seed, threads=args.threads,
                           weights_dir=args.weights_dir, scratch=args.scratch or args.out.parent)
    except BenchArgumentError as exc:
        print(f"bench-train: error: {exc}", file=sys.stderr)
        return 2
    from pipeline_src.fileio import atomic_write_json

    atomic_write_json(args.out, result)
    print(summary_line(result) + f" -> {args.out}")
    return 0


# ------------------------------------------------------------------------------------------ arguments
def check_counts(steps: int, warmup: int, repeats: int, batch_size: int | None, crop: int | None,
                 threads: int | None) -> None:
    for option, value in (("--steps", steps), ("--repeats", repeats)):
        if value < 1:
            raise BenchArgumentError(f"{option} {value}: expected an integer >= 1")
    if warmup < 1:
        # the window starts at the end of step `warmup`; step 1 also pays one-off costs (allocator, lazy init)
        raise BenchArgumentError(f"--warmup {warmup}: expected an integer >= 1 (the timed window starts after it)")
    for option, value in (("--batch-size", batch_size), ("--crop", crop), ("--threads", threads)):
        if value is not None and value < 1:
            raise BenchArgumentError(f"{option} {value}: expected an integer >= 1 (or leave it out)")


def check_single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchArgumentError(f"WORLD_SIZE={os.environ['WORLD_SIZE']}: bench-train compares single-process "
                                 "loops; run it with plain `python`, not torchrun")


def load_phase_recipe(path: Path, phase: int, preset: str | None, option: str | None) -> dict:
    """The recipe resolved for the preset (default: config/config.yaml's), checked to have phase `phase`."""
    from pipeline_src.config import ConfigError, load_pipeline_config, load_recipe, project_root

    try:
        if preset is None:
            preset = load_pipeline_config(project_root() / "config" / "config.yaml")["preset"]
        recipe = load_recipe(path, preset, option)
    except ConfigError as exc:
        raise BenchArgumentError(str(exc)) from exc
    n = len(recipe["phases"])
    if not 1 <= phase <= n:
        raise BenchArgumentError(f"--phase {phase}: {path} has phases 1..{n}")
    return recipe


# --------------------------------------------------------------------------------------- phase settings
def benchmark_recipe(recipe: dict, phase: int, total_steps: int, batch_size: int | None = None,
                     crop: int | None = None, bare: bool = False) -> dict:
    """A copy of the recipe whose phase runs `total_steps` iterations from scratch (with the batch and crop
    overrides); `bare` also moves every log / validation / checkpoint / image interval beyond the run."""
    out = copy.deepcopy(recipe)
    p = out["phases"][phase - 1]
    p["length"] = {"iterations": total_steps}
    p["init"] = "scratch"
    if batch_size is not None:
        p["batch_size"] = batch_size
    if crop is not None:
        p["crop"] = crop
    if bare:
        p.update({key: total_steps + 1 for key in INTERVAL_KEYS})
    return out


def effective_intervals(phase: dict) -> dict[str, int]:
    from pipeline_src.train.runner import INTERVAL_DEFAULTS

    return {key: int(phase.get(key, INTERVAL_DEFAULTS[key])) for key in INTERVAL_KEYS}


def events_in_window(intervals: dict[str, int], warmup: int, steps: int) -> dict[str, int]:
    """How many of each periodic event the timed window holds. The window runs from the end of optimizer step
    `warmup` to the end of step `warmup + steps`, so it holds the after-step work of steps warmup..warmup+steps-1
    (the runner does an event after step k when k % interval == 0)."""
    last = warmup + steps - 1
    return {EVENT_NAMES[key]: last // every - (warmup - 1) // every for key, every in intervals.items()}


# ---------------------------------------------------------------------------------------------- timing
class StepClock:
    """Marks the ends of optimizer steps `start` and `end` (counted from 1) via torch's global optimizer
    post-step hook, so the runner is timed without changes to it and both arms are timed the same way."""

    def __init__(self, start: int, end: int, device):
        self.start, self.end, self.device = start, end, device
        self.count = 0
        self.marks: dict[int, float] = {}
        self._handle = None

    def __enter__(self) -> "StepClock":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.count += 1
        if self.count in (self.start, self.end):
            if self.device.type == "cuda":
                import torch
                torch.cuda.synchronize(self.device)
            self.marks[self.count] = time.perf_counter()

    def seconds(self, arm: str) -> float:
        if self.start not in self.marks or self.end not in self.marks:
            raise RuntimeError(f"{arm}: the optimizer stepped {self.count} times, the window needs steps "
                               f"{self.start}..{self.end} (did an fp16 GradScaler skip steps? use amp: bf16 or off)")
        return self.marks[self.end] - self.marks[self.start]


# ------------------------------------------------------------------------------------------------ arms
def run_runner(recipe: dict, recipe_name: str, phase: int, manifest: Path, patches: Path, out_dir: Path,
               seed: int, device: str, weights_dir: Path) -> None:
    from pipeline_src.train.runner import PhaseJob, run_phase

    run_phase(PhaseJob(recipe=recipe, recipe_name=recipe_name, phase=phase, dataset=Path(manifest).stem,
                       manifest=manifest, patches=patches, out_dir=out_dir, weights_dir=weights_dir, seed=seed,
                       device=device, tracking=False, restart=True))


def run_plain(recipe: dict, phase: int, patches: Path, seed: int, device, weights_dir: Path) -> None:
    """The minimal loop a user would write by hand for this phase (see the module docstring)."""
    import torch

    from pipeline_src.losses import build_loss
    from pipeline_src.models import build_model
    from pipeline_src.train.batches import loss_options, target_key, training_set
    from pipeline_src.train.optim import build_optimizer
    from pipeline_src.train.runner import amp_dtype, model_seed, seed_everything

    p = recipe["phases"][phase - 1]
    total_steps = p["length"]["iterations"]
    seed_everything(model_seed(seed, phase))   # the runner's model seed: identical initial weights
    model = build_model(recipe["model"]["name"], **recipe["model"].get("args", {})).to(device)
    cuda = device.type == "cuda"
    if cuda and p.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)
    target = target_key(model)
    data = training_set(patches, p, model, seed)   # the phase's own sampling (windows or whole-image crops)
    loader = torch.utils.data.DataLoader(data, batch_size=p["batch_size"], shuffle=True, drop_last=True,
                                         num_workers=p.get("num_workers", 0), pin_memory=cuda,
                                         generator=torch.Generator().manual_seed(seed))
    loss_fn = build_loss(p["loss"], loss_options(recipe, p, weights_dir)).to(device)
    optimizer = build_optimizer(p["optimizer"], model.parameters())
    dtype = amp_dtype(p, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    model.train()
    step, epoch = 0, 0
    while step < total_steps:
        data.set_epoch(epoch)
        for batch in loader:
            x = torch.cat([batch[v] for v in model.input_views], dim=1).to(device, non_blocking=True)
            y = batch[target].to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            if step == total_steps:
                break
        epoch += 1


# ------------------------------------------------------------------------------------------- benchmark
def benchmark(recipe: dict, recipe_name: str, phase: int, manifest: Path, patches: Path, *, steps: int,
              warmup: int, repeats: int, device: str = "auto", batch_size: int | None = None,
              crop: int | None = None, seed: int = 0, threads: int | None = None,
              weights_dir: Path = Path("data/weights"), scratch: Path = Path(".")) -> dict:
    """Time every arm `repeats` times and return the results record (what --out holds)."""
    import torch

    from pipeline_src.train.distributed import DistInfo
    from pipeline_src.train.runner import amp_dtype, pick_device

    check_counts(steps, warmup, repeats, batch_size, crop, threads)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dev = pick_device(device, DistInfo())
    except RuntimeError as exc:
        raise BenchArgumentError(f"--device {device}: {exc}") from exc
    total = warmup + steps
    recipes = {"runner_bare": benchmark_recipe(recipe, phase, total, batch_size, crop, bare=True),
               "plain": benchmark_recipe(recipe, phase, total, batch_size, crop),
               "runner_configured": benchmark_recipe(recipe, phase, total, batch_size, crop)}

    def one_run(arm: str, out_dir: Path) -> None:
        if arm == "plain":
            run_plain(recipes[arm], phase, patches, seed, dev, weights_dir)
        else:
            run_runner(recipes[arm], recipe_name, phase, manifest, patches, out_dir, seed, device, weights_dir)

    seconds, wall = measure(one_run, warmup, total, repeats, dev, Path(scratch))
    used = recipes["runner_configured"]["phases"][phase - 1]
    dtype = amp_dtype(used, dev)
    bare, configured = effective_intervals(recipes["runner_bare"]["phases"][phase - 1]), effective_intervals(used)
    return {
        "benchmark": "train_throughput",
        "recipe": str(recipe.get("recipe_file", recipe_name)), "recipe_name": recipe_name,
        "preset": recipe["preset"], "option": recipe.get("option"), "phase": phase, "phase_name": used["name"],
        "model": recipe["model"], "loss": used["loss"], "optimizer": used["optimizer"],
        "manifest": str(manifest), "patches": str(patches),
        "batch_size": used["batch_size"], "crop": used["crop"], "num_workers": used.get("num_workers", 0),
        "steps": steps, "warmup": warmup, "repeats": repeats, "seed": seed, "arm_order": list(ARMS),
        "device": str(dev), "device_name": device_name(dev),
        "amp": str(dtype).replace("torch.", "") if dtype else "off", "torch_version": torch.__version__,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "stderr_is_tty": sys.stderr.isatty(),
        "runner_settings": {
            "runner_bare": bare, "runner_configured": configured,
            "events_in_window": {"runner_bare": events_in_window(bare, warmup, steps),
                                 "runner_configured": events_in_window(configured, warmup, steps)},
            "init": "scratch (benchmark override)", "tracking": "off",
        },
        "results": {arm: arm_stats(seconds[arm], wall[arm], steps, used["batch_size"]) for arm in ARMS},
        "overhead": {f"{arm}_over_plain": ratio_stats(seconds[arm], seconds["plain"])
                     for arm in ("runner_bare", "runner_configured")},
    }


def measure(one_run, warmup: int, total: int, repeats: int, dev, scratch: Path):
    """Per arm: the timed window's seconds and the whole call's seconds, one of each per repeat."""
    seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
    wall: dict[str, list[float]] = {arm: [] for arm in ARMS}
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".bench-train-", dir=scratch) as tmp:
        for r in range(repeats):
            for arm in ARMS:
                gc.collect()   # the previous arm's garbage is not collected inside this arm's window
                out_dir = Path(tmp) / f"{arm}-{r}"
                t0 = time.perf_counter()
                with StepClock(warmup, total, dev) as clock:
                    one_run(arm, out_dir)
                wall[arm].append(time.perf_counter() - t0)
                seconds[arm].append(clock.seconds(arm))
                if out_dir.exists():   # the runner's checkpoints and final.pt (the plain loop writes none)
                    shutil.rmtree(out_dir)
    return seconds, wall


def arm_stats(seconds: list[float], wall: list[float], steps: int, batch_size: int) -> dict:
    per_repeat = [steps / s for s in seconds]
    return {"steps_per_s": statistics.median(per_repeat),
            "samples_per_s": statistics.median(per_repeat) * batch_size,
            "steps_per_s_per_repeat": per_repeat, "window_s_per_repeat": seconds,
            "wall_s_per_repeat": wall}   # wall: the whole call, setup, warm-up and end-of-phase work included


def ratio_stats(arm_seconds: list[float], plain_seconds: list[float]) -> dict:
    """Time per step of an arm over the plain loop's, per repeat (the runs were made back to back)."""
    ratios = [a / p for a, p in zip(arm_seconds, plain_seconds)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_repeat": ratios}


def device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summary_line(result: dict) -> str:
    res, over = result["results"], result["overhead"]

    def ratio(key: str) -> str:
        o = over[key]
        return f"x{o['median']:.3f} ({o['min']:.3f}-{o['max']:.3f})"

    return (f"bench-train {result['recipe_name']} phase {result['phase']} ({result['phase_name']}) on "
            f"{result['device']} ({result['threads']} threads, amp {result['amp']}), batch {result['batch_size']}, "
            f"crop {result['crop']}, {result['steps']} steps after {result['warmup']}, median of "
            f"{result['repeats']}: plain {res['plain']['steps_per_s']:.3g} steps/s "
            f"({res['plain']['samples_per_s']:.3g} samples/s), runner {res['runner_bare']['steps_per_s']:.3g} bare / "
            f"{res['runner_configured']['steps_per_s']:.3g} as configured; runner/plain time per step "
            f"{ratio('runner_bare_over_plain')} bare, {ratio('runner_configured_over_plain')} as configured")
