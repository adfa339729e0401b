"""The MotionNFT trainer as a package: DiffusionNFT with the motion reward on a LoRA.

One optimiser step ("epoch" in DiffusionNFT's words):

1. **Rollouts.** ``prompts_per_epoch`` prompts (split over the processes) each get
   ``rollouts_per_prompt`` CFG-free samples from the *old* policy with the deterministic
   sampler (``dpm2`` or ``euler``). Text embeddings, reference latents and the target's
   flow are computed once per prompt and cached.
2. **Rewards.** The motion reward (:func:`motionnft.reward.motion_reward`, the same
   function as the Motion Reward node) of each rollout against the prompt's ground
   truth on the chosen flow backend, plus the judge's reward when a judge is configured
   (weights 0.5/0.5 by default; motion only without a judge).
3. **Optimality rewards** from the per-prompt mean and the global std, the group filters.
4. **Loss.** For each kept rollout, the sampler's timesteps (shuffled, a fraction kept):
   fresh noise, ``x_t``, the policy / old / reference velocities and the NFT loss
   (:func:`motionnft.nft.nft_loss`); AdamW on the LoRA, gradient clipping.
5. **Updates.** EMA of the LoRA (what is saved), old-policy soft update, data cursor.

Every random draw comes from a generator seeded by (seed, step, prompt, purpose), so a
run resumed from a checkpoint repeats the uninterrupted run exactly. Checkpoints are
written atomically every ``save_every`` steps, at the end, on Ctrl-C and on any error in
a step (the state of the last completed step; the error is raised again). A judge rating
that still fails after ``judge_retries`` retries skips its prompt for the step or stops the
run (``judge_failure``).

Multi-GPU: launch with ``accelerate launch`` (DDP or FSDP; configs in
``motionnft/configs/accelerate/``).

Modules. Generic (no MotionNFT in them; other trainers reuse them):

- :mod:`.presets` settings dataclass + TOML presets + ``--set`` overrides
- :mod:`.seeding` derived generators, global RNG states
- :mod:`.checkpoints` atomic checkpoint folders, ``weights_only`` loading, resume lookup
- :mod:`.metrics` ``metrics.csv`` and TensorBoard
- :mod:`.progress`, :mod:`.interrupt` progress bars, Ctrl-C held back at commit points
- :mod:`.distributed` accelerate setup, gathers, FSDP gradient handling

MotionNFT's:

- :mod:`.settings` :class:`~.settings.TrainConfig`, every setting and its default
- :mod:`.data` datasets, the prompt cursor, prepared prompts
- :mod:`.policies` the LoRA policy / old policy / EMA / reference and their updates
- :mod:`.rollouts`, :mod:`.rewards`, :mod:`.step` the phases of a step
- :mod:`.evaluation`, :mod:`.figures` held-out evaluation, the images a run writes
- :mod:`.loop` :class:`~.loop.Trainer` and :func:`~.loop.train`

Importing this package imports nothing heavy; :mod:`motionnft.train` re-exports the
public names.
"""
