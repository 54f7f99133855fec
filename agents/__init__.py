"""SB3 side of polar-rl: the ``polar-rl`` console script and its entry points.

``cli`` dispatches to ``train`` and ``evaluate``; ``algorithms`` maps ``agent.algo`` to an SB3 class;
``callbacks`` hold evaluation, episode metrics and checkpoints; ``wandb_output`` sends SB3's logger
to W&B; ``run_dir`` and ``reference_store`` own the run folder and the full-model result cache.
"""
