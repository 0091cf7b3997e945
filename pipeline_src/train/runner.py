"""The phase runner: one training phase of one recipe on one dataset, the same code for every paper.

A phase (from config/models/<recipe>.yaml, resolved for a preset) names its loss terms and weights, its
optimiser, learning-rate schedule, batch, crop, augmentation, length, and whether it starts from the
previous phase's weights. The runner:
  - seeds everything from (seed, phase) so a CPU run is reproducible bit for bit;
  - resumes from `last.pt` when one is there (written every `ckpt_every` steps before the last, removed once the
    phase's outputs are committed), including the data position
    and RNG states, so a run killed with SIGKILL ends with the same weights as one never interrupted — but only
    when everything that shapes the run is identical (resolved recipe and option, phase, dataset, seed, the
    data's content hashes, the starting weights, pretrained weights, world size, device type, precision);
    otherwise it starts the phase over and says in one line what changed (`resume_identity`);
  - uses AMP (bf16, or fp16 with a scaler) and channels-last on CUDA, DDP under torchrun;
  - logs loss terms, lr, samples/s and periodic validation PSNR to MLflow, with sample images;
  - writes `phase.json` and `final.pt` (the model file later stages read) together at the end, final.pt last,
    so that a kill at any point leaves either both or neither.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline_src.errors import CheckpointError, ConfigError, DataError
from pipeline_src.fileio import discard_outputs, output_set, sha256_file
from pipeline_src.model_io import initial_weights_not_drawn, load_model_file, load_weights, model_record
from pipeline_src.models import build_model
from pipeline_src.tracking import NullTracker, start_run
from pipeline_src.train import batches as batch_io
from pipeline_src.train.checkpoint import load_training_state, save_training_state, set_rng_state
from pipeline_src.train.distributed import DistInfo, barrier, init_distributed, shutdown
from pipeline_src.train.optim import build_optimizer
from pipeline_src.train.sampler import batches_per_epoch, epoch_batches
from pipeline_src.train.schedules import build_schedule

log = logging.getLogger("pipeline_src.train")

# A phase's periodic work when the recipe does not say (steps between log lines, validations, checkpoints, images).
INTERVAL_DEFAULTS = {"log_every": 50, "val_every": 1000, "ckpt_every": 1000, "image_every": 10**9}


def model_seed(seed: int, phase: int) -> int:
    """The seed the model is built under: same (seed, phase) -> same initial weights."""
    return seed * 1000 + phase


@dataclass
class PhaseJob:
    recipe: dict                      # resolved recipe (config.load_recipe)
    recipe_name: str
    phase: int                        # 1-based
    dataset: str
    manifest: Path
    patches: Path
    out_dir: Path
    prev_final: Path | None = None    # the previous phase's final.pt (phase init: previous)
    weights_dir: Path = Path("data/weights")
    seed: int = 0
    device: str = "auto"
    tracking: bool = True
    restart: bool = False
    extra_tags: dict = field(default_factory=dict)
    curves: Path | None = None        # validation curve CSV (default: <out_dir>/curves.csv)
    loss_curve: Path | None = None    # training loss curve CSV (default: <out_dir>/loss.csv)


def curve_paths(job: PhaseJob) -> tuple[Path, Path]:
    out = Path(job.out_dir)
    return Path(job.curves or out / "curves.csv"), Path(job.loss_curve or out / "loss.csv")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's tensors in key order: equal digests = identical weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def pick_device(requested: str, dist: DistInfo) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
        return torch.device("cuda", dist.local_rank)
    return torch.device(requested)


def amp_dtype(phase: dict, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16; never on the CPU (slow there, and it breaks bit-exact resume)."""
    mode = phase.get("amp", "auto")
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def resume_identity(job: PhaseJob, *, manifest_sha: str, patches_sha: str, init: dict, pretrained: dict,
                    world_size: int, device: torch.device, amp: torch.dtype | None) -> dict:
    """Everything that shapes a phase's run: a `last.pt` is resumed only when its identity equals this one."""
    as_json = (lambda v: json.loads(json.dumps(v, sort_keys=True, default=str)))
    return {
        # the recipe's own fields and this phase's (another phase's settings do not matter to this one, nor
        # where the recipe file lies, nor its notes)
        "recipe": as_json({k: v for k, v in job.recipe.items()
                           if k not in ("phases", "recipe_file", "budget_note")}),
        "phase": job.phase, "phase_settings": as_json(job.recipe["phases"][job.phase - 1]),
        "dataset": job.dataset, "seed": job.seed,
        "data": {"manifest_sha256": manifest_sha, "patches_meta_sha256": patches_sha},
        "init": {k: v for k, v in init.items() if k != "path"},
        "pretrained": pretrained,
        "world_size": world_size, "device": device.type, "amp": str(amp).replace("torch.", "") if amp else "off",
    }


def identity_change(old: dict, new: dict, limit: int = 3) -> str | None:
    """None when equal, else a short account of what differs, e.g. 'seed 0 -> 1; data.manifest_sha256 ...'."""
    diffs = list(_differences(old, new))
    if not diffs:
        return None
    return "; ".join(diffs[:limit]) + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def _differences(old, new, prefix: str = ""):
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(new) + [k for k in old if k not in new]:
            if old.get(key) != new.get(key):
                yield from _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return
    shorten = (lambda v: (s if len(s := json.dumps(v, sort_keys=True, default=str)) <= 24 else s[:20] + "..."))
    yield f"{prefix.rstrip('.')} {shorten(old)} -> {shorten(new)}"


def _resume_state(last_path: Path, identity: dict, restart: bool) -> tuple[dict | None, str | None]:
    """The training state to resume, or None with the reason the phase starts over (None: nothing to say)."""
    if restart:
        return None, "--restart" if last_path.exists() else None
    if not last_path.exists():
        return None, None
    try:
        state = load_training_state(last_path)
    except CheckpointError as exc:  # truncated, foreign, or from an older version: a cache, not an input
        return None, str(exc)
    change = identity_change(state["identity"], identity)
    if change is not None:
        return None, f"{last_path} was trained with another configuration or data: {change}"
    return state, None


class TrainingCurves:
    """The phase's curves for `dvc plots` (x = step): one validation row per validation (mean training loss since
    the previous row, lr, `val_score` — the task's primary figure, PSNR or max F — and every validation metric),
    and one loss row per log line. Kept in last.pt, so a resumed run writes the same rows."""

    def __init__(self, rows: list[dict] | None = None, loss_rows: list[dict] | None = None, loss_sum: float = 0.0,
                 loss_n: int = 0):
        self.rows, self.loss_rows = list(rows or []), list(loss_rows or [])
        self.loss_sum, self.loss_n = loss_sum, loss_n

    def add_loss(self, value: float) -> None:
        self.loss_sum, self.loss_n = self.loss_sum + value, self.loss_n + 1

    def add_log(self, step: int, lr: float, mean_loss: float) -> None:
        self.loss_rows.append({"step": step, "train_loss": mean_loss, "lr": lr})

    def add_point(self, step: int, lr: float, val: dict[str, float]) -> None:
        primary = val.get("val/psnr", val.get("val/max_f"))
        row = {"step": step, "train_loss": self.loss_sum / max(self.loss_n, 1), "lr": lr, "val_score": primary}
        row.update({k.replace("/", "_"): v for k, v in val.items()})
        self.rows.append(row)
        self.loss_sum, self.loss_n = 0.0, 0

    def state(self) -> dict:
        return {"rows": self.rows, "loss_rows": self.loss_rows, "loss_sum": self.loss_sum, "loss_n": self.loss_n}

    @classmethod
    def from_state(cls, state: dict | None) -> TrainingCurves:
        return cls(**state) if state else cls()

    @staticmethod
    def _csv(rows: list[dict], default_columns: list[str]) -> str:
        columns = list(dict.fromkeys(k for row in rows for k in row)) or default_columns
        lines = [",".join(columns)]
        for row in rows:
            lines.append(",".join("" if row.get(c) is None else repr(round(row[c], 6)) if isinstance(row[c], float)
                                  else str(row[c]) for c in columns))
        return "\n".join(lines) + "\n"

    def validation_csv(self) -> str:
        return self._csv(self.rows, ["step", "train_loss", "lr", "val_score"])

    def loss_csv(self) -> str:
        return self._csv(self.loss_rows, ["step", "train_loss", "lr"])


class _Progress:
    """tqdm bar with loss, lr and it/s on a terminal; a plain log line every `log_every` steps otherwise."""

    def __init__(self, total: int, start: int, desc: str, enabled: bool):
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True)

    def update(self, step: int, total: int, postfix: dict[str, float], line: bool) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        elif self.enabled and line:
            items = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"step {step}/{total} {items}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_phase(job: PhaseJob) -> dict[str, Any]:
    dist = init_distributed()
    try:
        return _run_phase(job, dist)
    finally:
        shutdown(dist)


def _run_phase(job: PhaseJob, dist: DistInfo) -> dict[str, Any]:
    from pipeline_src.data.samples import manifest_sha256

    phase = job.recipe["phases"][job.phase - 1]
    device = pick_device(job.device, dist)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, final_path = out / "last.pt", out / "final.pt"
    # the old outputs are being replaced: never left beside a new run's state
    discard_outputs([*curve_paths(job), out / "phase.json", final_path])
    manifest_sha = manifest_sha256(job.manifest)
    patches_meta = Path(job.patches) / "meta.json"
    if not patches_meta.is_file():
        raise DataError(f"{patches_meta}: no patch metadata; run `python -m pipeline_src patches` first")

    # --- model: same seed -> same initial weights; phase k>1 starts from phase k-1's final weights, checked
    # before the model is built, and loaded into one built without drawing initial weights (ATTSF's 90.8 M took
    # 4.8 s per phase to draw and discard; nothing after this draws from the global generator but training itself)
    seed_everything(model_seed(job.seed, job.phase))
    model_spec = job.recipe["model"]
    init_info: dict[str, str] = {"mode": phase["init"]}
    if phase["init"] == "previous":
        if job.prev_final is None:
            raise ConfigError(f"phase {job.phase} ({phase['name']}) starts from the previous phase, "
                              f"but no --init-from final.pt was given")
        prev = load_model_file(job.prev_final)
        if prev["model"] != {"name": model_spec["name"], "args": model_spec.get("args", {})}:
            raise CheckpointError(f"{job.prev_final}: holds model {prev['model']}, phase {job.phase} trains "
                                  f"{model_spec}; rerun the previous phase of this recipe")
        with initial_weights_not_drawn():
            model = build_model(model_spec["name"], **model_spec.get("args", {}))
        backbone_tags: dict[str, str] = {}
        load_weights(model, prev["state_dict"], job.prev_final, model_spec["name"])
        init_info.update(path=str(job.prev_final), sha256=sha256_file(job.prev_final), state_digest=state_digest(model))
    else:
        model = build_model(model_spec["name"], **model_spec.get("args", {}))
        backbone_tags = batch_io.load_pretrained_backbone(model, job.recipe, job.weights_dir)
    model.to(device)
    if device.type == "cuda" and phase.get("channels_last", True):
        model = model.to(memory_format=torch.channels_last)

    # --- data
    train_set = batch_io.training_set(job.patches, phase, model, seed=job.seed)
    val_batches = batch_io.validation_batches(job.patches, model, phase.get("val_samples", 8),
                                              bit_depth=phase.get("bit_depth"))
    steps_per_epoch = batches_per_epoch(len(train_set), phase["batch_size"], dist.world_size)
    total_steps = phase["length"].get("iterations") or phase["length"]["epochs"] * steps_per_epoch

    # --- loss, optimiser, schedule, AMP
    from pipeline_src.losses import build_loss
    loss_fn = build_loss(phase["loss"], batch_io.loss_options(job.recipe, phase, job.weights_dir)).to(device)
    optimizer = build_optimizer(phase["optimizer"], model.parameters())
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    lr_factor = build_schedule(phase["schedule"], total_steps, steps_per_epoch)
    dtype = amp_dtype(phase, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    # --- resume: only a run of the very same configuration and data continues; anything else starts over
    pretrained = batch_io.pretrained_flags(loss_fn)
    identity = resume_identity(job, manifest_sha=manifest_sha, patches_sha=sha256_file(patches_meta),
                               init={**init_info, **backbone_tags}, pretrained=pretrained,
                               world_size=dist.world_size, device=device, amp=dtype)
    step, epoch, batch_in_epoch, run_id, val, curves = 0, 0, 0, None, {}, TrainingCurves()
    state, restart_reason = _resume_state(last_path, identity, job.restart)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step, epoch, batch_in_epoch, run_id = (state["step"], state["epoch"], state["batch_in_epoch"],
                                               state["mlflow_run_id"])
        init_info = state["extra"].get("init", init_info)
        val = state["extra"].get("validation", {})
        curves = TrainingCurves.from_state(state["extra"].get("curves"))
        if dist.is_main:
            print(f"resuming {last_path} at step {step}/{total_steps} (epoch {epoch}, batch {batch_in_epoch})",
                  file=sys.stderr)
    elif restart_reason and dist.is_main:
        print(f"starting phase {job.phase} of {job.recipe_name} on {job.dataset} over: {restart_reason}",
              file=sys.stderr)

    # --- tracking (rank 0 only)
    name = f"train/{job.recipe_name}/{job.dataset}/phase{job.phase}"
    tags = {"pipeline.role": "train", "paper": job.recipe["paper"], "recipe": job.recipe_name,
            "dataset": job.dataset, "phase": str(job.phase), "phase.name": phase["name"],
            "preset": job.recipe["preset"], "device": str(device), "torch.version": torch.__version__,
            "manifest.sha256": manifest_sha, "world_size": str(dist.world_size),
            "amp": str(dtype).replace("torch.", "") if dtype else "off",
            **{f"weights.{k}.pretrained": str(v).lower() for k, v in pretrained.items()}, **backbone_tags,
            **job.extra_tags}
    tracker = (start_run(name, tags=tags, enabled=job.tracking, resume_run_id=run_id) if dist.is_main
               else NullTracker())
    if run_id is None:
        tracker.log_params({"recipe": {k: v for k, v in job.recipe.items() if k != "phases"},
                            "phase": phase, "job": {"dataset": job.dataset, "phase": job.phase, "seed": job.seed,
                                                    "total_steps": total_steps,
                                                    "steps_per_epoch": steps_per_epoch}})
        tracker.log_dict(job.recipe, "config/resolved_recipe.json")
        tracker.set_tags({f"init.{k}": v for k, v in init_info.items()})

    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- loop
    every = {k: int(phase.get(k, v)) for k, v in INTERVAL_DEFAULTS.items()}
    progress = _Progress(total_steps, step, name, enabled=dist.is_main)
    window: dict[str, float] = {}
    window_n, window_t0 = 0, time.perf_counter()
    try:
        while step < total_steps:
            train_set.set_epoch(epoch)
            order = [idx for _, idx in epoch_batches(len(train_set), phase["batch_size"], job.seed, epoch,
                                                     batch_in_epoch, dist.rank, dist.world_size)]
            loader = batch_io.loader(train_set, order, phase.get("num_workers", 0))
            for batch in loader:
                factor = lr_factor(step)
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * factor
                inputs, target = batch_io.to_device(batch, model, device)
                train_model.train()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    pred = train_model(inputs)
                    loss, terms = loss_fn(pred, target)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step}; "
                                             f"terms {({k: float(v) for k, v in terms.items()})}")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                step += 1
                batch_in_epoch += 1
                if batch_in_epoch == steps_per_epoch:
                    epoch, batch_in_epoch = epoch + 1, 0

                for k, v in {"loss": float(loss.detach()), **{k: float(v) for k, v in terms.items()}}.items():
                    window[k] = window.get(k, 0.0) + v
                window_n += 1
                curves.add_loss(float(loss.detach()))
                log_now = step % every["log_every"] == 0 or step == total_steps
                shown = {"loss": float(loss.detach()), "lr": optimizer.param_groups[0]["lr"]}
                progress.update(step, total_steps, shown, line=log_now)
                if log_now:
                    dt = time.perf_counter() - window_t0
                    metrics = {f"train/{k}": v / window_n for k, v in window.items()}
                    curves.add_log(step, optimizer.param_groups[0]["lr"], metrics["train/loss"])
                    metrics["lr"] = optimizer.param_groups[0]["lr"]
                    metrics["samples_per_s"] = window_n * phase["batch_size"] * dist.world_size / max(dt, 1e-9)
                    tracker.log_metrics(metrics, step)
                    window, window_n, window_t0 = {}, 0, time.perf_counter()
                if step % every["val_every"] == 0 or step == total_steps:
                    val = batch_io.validate(model, val_batches, device)
                    tracker.log_metrics(val, step)
                    curves.add_point(step, optimizer.param_groups[0]["lr"], val)
                # not at the last step: the phase's outputs follow at once (a kill before they are committed
                # resumes from the previous checkpoint and redoes the same steps)
                if dist.is_main and step % every["ckpt_every"] == 0 and step < total_steps:
                    save_training_state(last_path, model=model, optimizer=optimizer, scaler=scaler, step=step,
                                        epoch=epoch, batch_in_epoch=batch_in_epoch, identity=identity,
                                        mlflow_run_id=tracker.run_id,
                                        extra={"init": init_info, "validation": val, "curves": curves.state()})
                if dist.is_main and (step % every["image_every"] == 0 or step == total_steps):
                    tracker.log_image(batch_io.sample_strip(model, val_batches, device), f"samples/step_{step:07d}.png")
                if step >= total_steps:
                    break
        progress.close()
        if not val:  # a validation lost with a kill between the last checkpoint and the end: it is deterministic
            val = batch_io.validate(model, val_batches, device)
        summary = _finish(job, model, phase, step, total_steps, val, init_info, tracker, final_path, dist, curves)
        if dist.is_main:  # the phase is done: its resume state (model, optimiser, RNGs; 1 GB for ATTSF) is not needed
            last_path.unlink(missing_ok=True)
    except BaseException:
        progress.close()
        tracker.end("KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    tracker.end("FINISHED")
    return summary


def _finish(job, model, phase, step, total_steps, val, init_info, tracker, final_path: Path, dist,
            curves: TrainingCurves) -> dict:
    barrier(dist)
    summary = {"paper": job.recipe["paper"], "recipe": job.recipe_name, "dataset": job.dataset, "phase": job.phase,
               "phase_name": phase["name"], "preset": job.recipe["preset"], "seed": job.seed, "steps": step,
               "total_steps": total_steps, "validation": val, "init": init_info,
               "final_state_digest": state_digest(model), "mlflow_run_id": tracker.run_id}
    if dist.is_main:
        record = model_record(model, job.recipe["model"]["name"], job.recipe["model"].get("args", {}))
        record.update(paper=job.recipe["paper"], recipe=job.recipe_name, dataset=job.dataset, phase=job.phase,
                      step=step, config=json.loads(json.dumps(job.recipe, default=str)),
                      mlflow_run_id=tracker.run_id, init=init_info, protocol=job.recipe["protocol"])
        summary_path = final_path.with_name("phase.json")
        curves_path, loss_path = curve_paths(job)
        with output_set([loss_path, curves_path, summary_path, final_path]) as tmp:  # final.pt (read next) last
            tmp[loss_path].write_text(curves.loss_csv())
            tmp[curves_path].write_text(curves.validation_csv())
            tmp[summary_path].write_text(json.dumps(summary, indent=2) + "\n")
            torch.save(record, tmp[final_path])
        tracker.log_artifact(summary_path)
        tracker.log_metrics({"final/" + k.split("/", 1)[-1]: v for k, v in val.items()}, step)
    return summary
