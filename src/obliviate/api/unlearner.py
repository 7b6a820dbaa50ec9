"""``Unlearner`` + ``UnlearnerConfig`` (seed 004): LoRA unlearning of any image classifier.

The objective per step is ``−CE_f + λ_retain·CE_r`` on a forget batch and a retain batch;
once the forget batch's mean true-class probability is below ``forget_threshold`` the
forget term is dropped (the step only repairs the retain set), and training stops early
when a whole epoch's forget probability (mean over the epoch's forget samples) is below
the threshold. Only LoRA adapter weights (plus optional ``modules_to_save``) train; the
model passed in is deep-copied and never modified.

Override :meth:`Unlearner._train_step` to change the objective (see ``docs/vision.md``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from obliviate.api.evaluator import default_device, logits_of, split_batch
from obliviate.api.logging import RunLogger
from obliviate.errors import ConfigError, DataError
from obliviate.models.lora import apply_lora

log = logging.getLogger(__name__)


@dataclass
class UnlearnerConfig:
    """Hyper-parameters of :class:`Unlearner` (no logic).

    Attributes:
        epochs: Maximum passes over the forget loader.
        lr: AdamW learning rate of the adapter weights.
        rank: LoRA rank ``r``.
        alpha: LoRA scaling numerator (scale = alpha / rank).
        lambda_retain: Weight of the retain cross-entropy.
        device: Torch device (``None``: CUDA when available, else CPU).
        target_modules: LoRA target module names (``None``: discovered from the model).
        modules_to_save: Modules trained in full besides the adapters (e.g. ``["fc"]``).
        dropout: LoRA dropout.
        weight_decay: AdamW weight decay.
        forget_threshold: Forget-probability level below which the forget term is dropped
            (per batch) and training stops (per epoch).
        early_stop: Stop once an epoch's forget probability is below ``forget_threshold``.
        max_grad_norm: Gradient-norm clipping (``None`` = off).
        seed: Seed of the LoRA initialisation.
        log_every: Log step metrics every this many steps.
        use_tensorboard: Write TensorBoard event files to ``tensorboard_log_dir``.
        tensorboard_log_dir: TensorBoard directory.
        use_wandb: Log to Weights & Biases (offline unless ``WANDB_MODE`` is set).
        wandb_project: W&B project.
        wandb_run_name: W&B run name.
        wandb_dir: W&B files directory (default: ``./wandb``).
    """

    epochs: int = 8
    lr: float = 3e-4
    rank: int = 8
    alpha: float = 16.0
    lambda_retain: float = 1.0
    device: str | None = None
    target_modules: Sequence[str] | None = None
    modules_to_save: Sequence[str] | None = None
    dropout: float = 0.0
    weight_decay: float = 0.0
    forget_threshold: float = 0.01
    early_stop: bool = True
    max_grad_norm: float | None = None
    seed: int = 0
    log_every: int = 1
    use_tensorboard: bool = False
    tensorboard_log_dir: str = "./runs"
    use_wandb: bool = False
    wandb_project: str | None = "obliviate"
    wandb_run_name: str | None = None
    wandb_dir: str | None = None

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise ConfigError(f"UnlearnerConfig.epochs must be >= 1, got {self.epochs}")
        if not float(self.lr) > 0:
            raise ConfigError(f"UnlearnerConfig.lr must be > 0, got {self.lr}")
        if int(self.rank) < 1:
            raise ConfigError(f"UnlearnerConfig.rank must be >= 1, got {self.rank}")
        if float(self.lambda_retain) < 0:
            raise ConfigError(f"UnlearnerConfig.lambda_retain must be >= 0, got {self.lambda_retain}")
        if not 0.0 <= float(self.forget_threshold) <= 1.0:
            raise ConfigError(f"UnlearnerConfig.forget_threshold must be in [0, 1], got {self.forget_threshold}")
        if int(self.log_every) < 1:
            raise ConfigError(f"UnlearnerConfig.log_every must be >= 1, got {self.log_every}")


class Unlearner:
    """LoRA unlearning of a classifier on a forget loader, anchored by a retain loader.

    Args:
        model: Trained classifier (deep-copied; the original is never modified).
        forget_loader: ``(images, labels)`` batches of the forget set (defines an epoch).
        retain_loader: ``(images, labels)`` batches of the retain set (cycled).
        config: Hyper-parameters.

    Attributes:
        model: The PEFT-wrapped copy being trained.
        optimizer: AdamW over the trainable (adapter) parameters.
        history: One dict per finished epoch (``epoch``, ``loss``, ``forget_prob``, ``steps``).
        stopped_early: Whether training stopped on the forget-probability criterion.

    Example:
        >>> cfg = UnlearnerConfig(epochs=8, lr=3e-4, rank=8, alpha=16, lambda_retain=1.0)  # doctest: +SKIP
        >>> peft_model = Unlearner(model=model, forget_loader=f, retain_loader=r, config=cfg).train()  # doctest: +SKIP
        >>> peft_model.save_pretrained("./checkpoints/unlearned")  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, forget_loader: Iterable, retain_loader: Iterable, config: UnlearnerConfig | None = None) -> None:
        self.config = config or UnlearnerConfig()
        self.device = torch.device(self.config.device or default_device())
        self.forget_loader, self.retain_loader = forget_loader, retain_loader
        torch.manual_seed(int(self.config.seed))
        base = copy.deepcopy(model)
        self.model = apply_lora(base, r=int(self.config.rank), alpha=float(self.config.alpha), dropout=float(self.config.dropout),
                                target_modules=self.config.target_modules, modules_to_save=self.config.modules_to_save).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=float(self.config.lr), weight_decay=float(self.config.weight_decay))
        self.history: list[dict[str, float]] = []
        self.global_step = 0
        self.stopped_early = False
        self._retain_iter: Iterator | None = None

    # ------------------------------------------------------------------------- helpers
    def _next_retain(self) -> Any:
        """Next retain batch, restarting the retain loader when it is exhausted."""
        for _ in range(2):
            if self._retain_iter is None:
                self._retain_iter = iter(self.retain_loader)
            try:
                return next(self._retain_iter)
            except StopIteration:
                self._retain_iter = None
        raise DataError("the retain loader yielded no batches")

    @staticmethod
    def forget_probability(logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean softmax probability of the true labels over the batch."""
        with torch.no_grad():
            return float(torch.softmax(logits.float(), -1).gather(1, labels[:, None]).mean())

    def _step_optimizer(self, loss: torch.Tensor) -> None:
        """Backward + (clipped) AdamW step on the trainable parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], float(self.config.max_grad_norm))
        self.optimizer.step()

    # ------------------------------------------------------------------------- override point
    def _train_step(self, f_images: torch.Tensor, f_labels: torch.Tensor, r_images: torch.Tensor,
                    r_labels: torch.Tensor) -> tuple[float, float]:
        """One optimisation step; returns ``(loss_value, batch_forget_prob)``.

        Loss: ``−CE(forget) + lambda_retain · CE(retain)``; the forget term is dropped when
        the batch's forget probability (before the step) is below ``forget_threshold``.
        Subclasses may replace the objective entirely; they must step ``self.optimizer``
        (or call :meth:`_step_optimizer`) and return the same pair.
        """
        self.model.train()
        f_logits = logits_of(self.model(f_images))  # [b_f, C]
        r_logits = logits_of(self.model(r_images))  # [b_r, C]
        forget_prob = self.forget_probability(f_logits, f_labels)
        loss = float(self.config.lambda_retain) * F.cross_entropy(r_logits.float(), r_labels)
        if forget_prob >= float(self.config.forget_threshold):
            loss = loss - F.cross_entropy(f_logits.float(), f_labels)
        self._step_optimizer(loss)
        return float(loss.detach()), forget_prob

    # ------------------------------------------------------------------------- loop
    def train(self) -> nn.Module:
        """Run the unlearning loop; returns the PEFT model (``save_pretrained`` works).

        Raises:
            DataError: The forget loader yields no batch.
        """
        cfg = self.config
        logger = RunLogger(use_tensorboard=cfg.use_tensorboard, tensorboard_log_dir=cfg.tensorboard_log_dir, use_wandb=cfg.use_wandb,
                           wandb_project=cfg.wandb_project, wandb_run_name=cfg.wandb_run_name, wandb_dir=cfg.wandb_dir,
                           config={k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in asdict(cfg).items()})
        try:
            for epoch in range(int(cfg.epochs)):
                prob_sum, n_samples, loss_sum, steps = 0.0, 0, 0.0, 0
                for batch in self.forget_loader:
                    f_x, f_y = split_batch(batch)
                    r_x, r_y = split_batch(self._next_retain())
                    loss, prob = self._train_step(f_x.to(self.device), f_y.to(self.device).long(),
                                                  r_x.to(self.device), r_y.to(self.device).long())
                    self.global_step += 1
                    steps += 1
                    loss_sum += loss
                    prob_sum += prob * len(f_y)
                    n_samples += len(f_y)
                    if self.global_step % int(cfg.log_every) == 0:
                        logger.log({"train/loss": loss, "train/batch_forget_prob": prob}, self.global_step)
                if steps == 0:
                    raise DataError("the forget loader yielded no batches; the forget set is empty")
                record = {"epoch": epoch + 1, "loss": loss_sum / steps, "forget_prob": prob_sum / n_samples, "steps": steps}
                self.history.append(record)
                logger.log({"epoch/loss": record["loss"], "epoch/forget_prob": record["forget_prob"]}, self.global_step)
                log.info("epoch %d: loss %.4f, forget prob %.4f", epoch + 1, record["loss"], record["forget_prob"])
                if cfg.early_stop and record["forget_prob"] < float(cfg.forget_threshold):
                    self.stopped_early = True
                    break
        finally:
            logger.close()
        self.model.eval()
        return self.model
