"""TensorBoard + Weights & Biases façade used by the seed-004 ``Unlearner``.

W&B never needs the network here: unless ``WANDB_MODE`` is set in the environment, runs are
created with ``mode="offline"`` (sync later with ``wandb sync <dir>``). Both back-ends are
optional dependencies; asking for one that is not installed raises an ``ImportError`` that
names the ``pip install`` command.
"""

from __future__ import annotations

import os
from typing import Any


class RunLogger:
    """Log scalar dicts to TensorBoard and/or W&B (a no-op when both are off).

    Args:
        use_tensorboard: Write TensorBoard event files to ``tensorboard_log_dir``.
        tensorboard_log_dir: Event-file directory.
        use_wandb: Log to a W&B run (offline unless ``WANDB_MODE`` says otherwise).
        wandb_project, wandb_run_name: W&B project and run name.
        wandb_dir: Where W&B writes its files (default: W&B's own default, ``./wandb``).
        config: Hyper-parameters recorded with the run.
    """

    def __init__(self, *, use_tensorboard: bool = False, tensorboard_log_dir: str = "./runs", use_wandb: bool = False,
                 wandb_project: str | None = None, wandb_run_name: str | None = None, wandb_dir: str | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.tb = None
        self.wandb_run = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("use_tensorboard=True needs the tensorboard package: pip install 'obliviate[report]'") from None
            self.tb = SummaryWriter(log_dir=tensorboard_log_dir)
            if config:
                self.tb.add_text("config", "\n".join(f"{k}: {v}" for k, v in config.items()))
        if use_wandb:
            try:
                import wandb
            except ImportError:
                raise ImportError("use_wandb=True needs the wandb package: pip install wandb "
                                  "(or pip install 'obliviate[wandb]')") from None
            mode = os.environ.get("WANDB_MODE") or "offline"
            kwargs: dict[str, Any] = {"project": wandb_project, "name": wandb_run_name, "config": config or {}, "mode": mode,
                                      "reinit": "finish_previous"}
            if wandb_dir:
                os.makedirs(wandb_dir, exist_ok=True)
                kwargs["dir"] = wandb_dir
            try:
                self.wandb_run = wandb.init(**kwargs)
            except TypeError:  # older wandb without reinit="finish_previous"
                kwargs["reinit"] = True
                self.wandb_run = wandb.init(**kwargs)

    @property
    def active(self) -> bool:
        """True when at least one back-end is on."""
        return self.tb is not None or self.wandb_run is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars (``None`` values are skipped) at ``step``."""
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if self.tb is not None:
            for key, value in clean.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def close(self) -> None:
        """Flush and close both back-ends (safe to call twice)."""
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
