"""The LoRA policies DiffusionNFT keeps on one transformer, and their updates.

- the **policy** (PEFT adapter ``default``): the weights the optimiser trains;
- the **old policy** (adapter ``old``): what rollouts and the loss's ``v_old`` come from,
  a slow soft copy of the policy (:meth:`LoraPolicies.update`);
- the **EMA** of the policy (plain float32 tensors, not an adapter): what gets saved and
  evaluated (:meth:`LoraPolicies.ema_as_policy` swaps it in);
- the **reference** (adapters disabled): the base model of the KL term.
"""

from __future__ import annotations

import contextlib
import warnings

import torch


class LoraPolicies:
    """The trained policy (adapter ``default``), the old policy (adapter ``old``) and the EMA.

    :meth:`use` selects which one the transformer runs: ``"policy"``, ``"old"`` or
    ``"base"`` (adapters disabled: the reference model of the KL term).
    """

    def __init__(self, transformer, rank: int, alpha: float, targets: list[str], exclude: list[str]):
        from peft import LoraConfig

        self.transformer = transformer
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets),
                            exclude_modules=list(exclude) or None)
        transformer.requires_grad_(False)
        transformer.add_adapter(config, adapter_name="default")
        with warnings.catch_warnings():  # two adapters on one model is the point here
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            transformer.add_adapter(config, adapter_name="old")
        self.rank, self.alpha, self.targets = rank, alpha, list(targets)
        named = dict(transformer.named_parameters())
        self.policy = {n: p for n, p in named.items() if ".lora_" in n and ".default." in n}
        self.old = {n.replace(".default.", ".old."): named[n.replace(".default.", ".old.")] for n in self.policy}
        if not self.policy:
            raise ValueError(f"LoRA targets {targets} matched no module of the transformer")
        with torch.no_grad():
            for name, param in self.policy.items():
                self.old[name.replace(".default.", ".old.")].copy_(param)
        self.ema = [p.detach().clone().float() for p in self.policy_tensors()]
        self.mode = None
        self.use("policy")

    def use(self, which: str) -> None:
        if which == self.mode:
            return
        transformer = self.transformer
        if which == "base":
            transformer.disable_adapters()
        else:
            transformer.enable_adapters()
            transformer.set_adapter("default" if which == "policy" else "old")
        # peft flips requires_grad when switching adapters: only the policy trains.
        for param in self.policy.values():
            param.requires_grad_(True)
        for param in self.old.values():
            param.requires_grad_(False)
        self.mode = which

    def policy_tensors(self) -> list[torch.Tensor]:
        return list(self.policy.values())

    def old_tensors(self) -> list[torch.Tensor]:
        return [self.old[n.replace(".default.", ".old.")] for n in self.policy]

    def tensors(self, which: str) -> list[torch.Tensor]:
        """``"ema"``, ``"policy"`` or ``"old"``, in the order of :attr:`policy`'s names."""
        return {"ema": self.ema, "policy": self.policy_tensors(), "old": self.old_tensors()}[which]

    # -- updates --------------------------------------------------------------------------
    def update(self, step: int, nft) -> tuple[float, float]:
        """After optimiser step ``step`` (counted from 1): EMA ← decay·EMA + (1 − decay)·θ, then
        old ← η·old + (1 − η)·θ (:class:`~motionnft.nft.NFTConfig` ``nft``). Returns (decay, η)."""
        from ..nft import ema_decay, lerp_, old_policy_rate

        decay = ema_decay(step, nft)  # as the release: after the step count is incremented
        lerp_(self.ema, self.policy_tensors(), decay)
        eta = old_policy_rate(step, nft)
        lerp_(self.old_tensors(), self.policy_tensors(), eta)
        return decay, eta

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the policy's weights, for :meth:`restore`."""
        return [p.detach().clone() for p in self.policy_tensors()]

    @torch.no_grad()
    def restore(self, weights: list[torch.Tensor]) -> None:
        for target, source in zip(self.policy_tensors(), weights):
            target.copy_(source)

    @contextlib.contextmanager
    def ema_as_policy(self):
        """The policy adapter holds the EMA weights (what is saved) inside the block."""
        saved = self.snapshot()
        self.restore(self.ema)
        try:
            yield
        finally:
            self.restore(saved)

    # -- checkpoints and export -------------------------------------------------------------
    def state(self) -> dict:
        """Policy, old policy and EMA as CPU tensor lists, with the parameter names."""
        return {"policy": [p.detach().cpu().clone() for p in self.policy_tensors()],
                "old": [p.detach().cpu().clone() for p in self.old_tensors()],
                "ema": [p.cpu().clone() for p in self.ema],
                "names": list(self.policy)}

    @torch.no_grad()
    def load_state(self, state: dict, where) -> None:
        """Restore :meth:`state`; ValueError naming ``where`` when the LoRA sits on other modules."""
        if state["names"] != list(self.policy):
            raise ValueError(f"checkpoint {where} holds a LoRA on other modules than this configuration's")
        for which in ("policy", "old", "ema"):
            for target, source in zip(self.tensors(which), state[which]):
                target.copy_(source)

    def lora_weights(self, which: str, base: str, metadata: dict):
        """One of the LoRAs as :class:`~motionnft.lora.LoraWeights` (float32, CPU) for ``base``."""
        from ..lora import lora_from_peft_state_dict

        named = dict(zip(self.policy, self.tensors(which)))
        return lora_from_peft_state_dict({k: v.detach().float().cpu() for k, v in named.items()},
                                         alpha=self.alpha, base=base, metadata=metadata)
