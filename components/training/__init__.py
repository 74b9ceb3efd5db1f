"""Training: HealthGPT's three-stage learning on a MedVLM (METHODS.md §1), its trainer and its recipe.

Modules (import the one you need; nothing heavy happens at import)::

    components.training.stages       the table of which parameters train in each stage (freeze_for)
    components.training.data         records, image cache, VQ target codes, seeded resumable sampling
    components.training.trainer      train_stage: the loop (AdamW, cosine, accumulation, clipping, checkpoints)
    components.training.checkpoint   atomic checkpoints, RNG capture/restore
    components.training.precision    fp32 master weights over a bf16/fp16 base, autocast, fp16 loss scaling
    components.training.distributed  torchrun / DDP helpers (gloo on CPU, nccl on GPU)
    components.training.base         bootstrap_base: the tiny base VLM, cached by config + data hash
    components.training.plugins      prepare_model / save_trained / load_trained (the two peft plugins)
    components.training.recipe       train_recipe / evaluate_recipe, and ``python -m components.training.recipe``
"""
