"""Experiment trackers (train.report_to): the metrics of metrics.jsonl, also sent to
TensorBoard, Weights & Biases or MLflow, under the same names and steps, the run's config as
their hyperparameters.

metrics.jsonl stays the record (the report and the pipeline read it); a tracker receives
exactly the rows tether.rundir.MetricsLog writes, from the process that writes them (rank 0
under torchrun). Neither library is needed to install tether: each is imported when a run asks
for it, and a missing one is a clear error before anything is written.

Resume continues the same curves. metrics.jsonl drops the rows after the checkpoint's step
(they run again); TensorBoard is told the same (purge_step: its reader hides the older events
from that step on). A W&B run cannot rewrite a step it has logged: the resumed run, found by
the id saved in run_dir/wandb_run_id, is sent only the steps after the last one logged before
the interruption (the steps in between keep their first values there; a resume is exact, so
only timings differ). An MLflow run is reopened the same way (run_dir/mlflow_run_id): it would
keep a step logged twice as two points.
"""

from __future__ import annotations

import importlib
import logging
import netrc
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from tether.config import to_dict, to_yaml
from tether.errors import ConfigError
from tether.files import atomic_write_text

# train.report_to's values: the module each imports, and the package that brings it.
LIBRARIES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "mlflow": ("mlflow", "mlflow")}
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
MLFLOW_ID_FILE = "mlflow_run_id"
MLFLOW_DB = "mlflow.db"


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def check_available(report_to: Sequence[str]) -> None:
    """Stop (exit code 2, naming the pip command) if a tracker's package is missing: called
    before a run writes anything."""
    for name in report_to:
        _library(name)


def open_trackers(report_to: Sequence[str], run_dir: Path, config: Any,
                  resume_step: int | None, logged_until: int | None) -> list[Tracker]:
    """The trackers of train.report_to for the run in `run_dir`. `resume_step`: the step of
    the checkpoint resumed from (None: a fresh run); `logged_until`: the last step
    metrics.jsonl held before resuming (logged to the trackers too)."""
    opened: dict[str, type] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                               "mlflow": MLflowTracker}
    return [opened[name](Path(run_dir), config, resume_step, logged_until)
            for name in dict.fromkeys(report_to)]


def _library(name: str) -> Any:
    module, package = LIBRARIES[name]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"train.report_to: {name} needs the {package} package, which is not "
                          f"installed: pip install {package}") from None


def flat_config(config: Any) -> dict[str, Any]:
    """The config as dotted keys and scalar values (lists as text), as hyperparameter tables
    want them: {"optim.lr": 1e-05, "train.report_to": "['tensorboard']", ...}."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            out[prefix[:-1]] = value if isinstance(value, (int, float, str, bool)) \
                else str(value)

    walk("", to_dict(config))
    return out


class TensorBoardTracker:
    """Event files in run_dir/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    def __init__(self, run_dir: Path, config: Any, resume_step: int | None,
                 logged_until: int | None):
        tensorboard = _library("tensorboard")
        # purge_step: TensorBoard's reader drops the earlier files' events from this step on,
        # the steps metrics.jsonl dropped too.
        purge = None if resume_step is None else resume_step + 1
        self.writer = tensorboard.SummaryWriter(str(run_dir / TENSORBOARD_DIR),
                                                purge_step=purge)
        if resume_step is None:
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(flat_config(config), {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + to_yaml(config) + "```")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # as metrics.jsonl is: a killed run keeps every step it logged

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in run_dir/wandb. Online with an API key (WANDB_API_KEY or `wandb login`),
    else offline (`wandb sync` uploads it later); WANDB_MODE, WANDB_PROJECT (default tether)
    and WANDB_ENTITY are honoured."""

    def __init__(self, run_dir: Path, config: Any, resume_step: int | None,
                 logged_until: int | None):
        wandb = _library("wandb")
        id_file = run_dir / WANDB_ID_FILE
        if resume_step is not None and id_file.exists():
            run_id = id_file.read_text().strip()
            self.skip_until = logged_until if logged_until is not None else resume_step
        else:
            run_id, self.skip_until = secrets.token_hex(4), -1
            atomic_write_text(id_file, run_id + "\n")  # before init: a run killed now resumes it
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "tether"), dir=str(run_dir), id=run_id,
            name=f"{run_dir.resolve().parent.name}/{run_dir.name}", config=to_dict(config),
            resume="allow", mode=wandb_mode(),
            reinit="finish_previous",  # a run left open by an exception in this process
            # tether's own output (and its progress bar) stay as they are
            settings=wandb.Settings(console="off", quiet=True))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if step > self.skip_until:
            self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run at MLFLOW_TRACKING_URI (a tracking server or a database) where it is set,
    else in the SQLite database run_dir/mlflow.db (`mlflow ui --backend-store-uri
    sqlite:///RUN_DIR/mlflow.db`); in the experiment MLFLOW_EXPERIMENT_NAME (default tether).
    Through MlflowClient, not the fluent API: no run is left active in the process."""

    def __init__(self, run_dir: Path, config: Any, resume_step: int | None,
                 logged_until: int | None):
        _library("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or \
            f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"
        # MLflow announces each table it creates in a new database, at INFO
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run_dir / MLFLOW_ID_FILE
        if resume_step is not None and id_file.exists():
            self.run_id = id_file.read_text().strip()
            self.skip_until = logged_until if logged_until is not None else resume_step
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "tether")
        experiment = self.client.get_experiment_by_name(name)
        # Without a tracking server, artifacts (config.yaml) go beside the database, not to
        # ./mlruns in whatever directory the run was started from.
        artifacts = None if os.environ.get("MLFLOW_TRACKING_URI") else \
            (run_dir / "mlruns").resolve().as_uri()
        experiment_id = experiment.experiment_id if experiment else \
            self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(
            experiment_id, run_name=f"{run_dir.resolve().parent.name}/{run_dir.name}").info.run_id
        atomic_write_text(id_file, self.run_id + "\n")
        self.skip_until = -1
        params = [Param(key, str(value)) for key, value in flat_config(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes up to 100 per call
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_text(self.run_id, to_yaml(config), "config.yaml")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        if step <= self.skip_until:
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, value in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def wandb_mode() -> str | None:
    """online with an API key, else offline; None (W&B's own choice) where WANDB_MODE says."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False

