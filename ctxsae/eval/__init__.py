"""Evaluate one trained SAE: is it better, and is its sparsity real?

    run dir (config.yaml, sae.safetensors) -> same source, cache, split and LM as training    (ctxsae.train.run_dir)
        -> held-out windows -> SAE once -> accumulators: reconstruction, sparsity, temporal,
           context pathway, and any a caller adds (the feature browser's)                     (held_out)
        -> synthetic data: ground-truth figures on the same windows                            (ground_truth)
        -> LM with the reconstruction spliced in -> CE loss recovered, KL                      (downstream)
        -> two-language windows -> LM -> SAE -> best "language B started" latent              (probe)
        -> eval.json, eval.md, eval_heatmap_*.png, TensorBoard in the run dir                  (figures, run)

Held-out windows are the DataModule's val split (the same windows for every run of a sweep);
metrics count the positions its ``mask_BT`` keeps, as training does. Activations are fed to the
SAE in its own units (``sae.act_scale``). Synthetic data has no LM: downstream and probe figures
are null there, and ground-truth figures are added instead.
"""
