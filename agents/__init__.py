"""The ``polar-rl`` console script, its entry points, and the SB3 / W&B parts they share.

``cli`` dispatches each command to the module of the same name (``train``, ``evaluate``,
``baselines``, ``export``, ``generate``, ``sweep``, ``pareto``); ``algorithms`` maps ``agent.algo``
to an SB3 class; ``callbacks`` hold evaluation, episode metrics and checkpoints; ``wandb_output``
sends SB3's logger to W&B; ``warm_start`` clones a static program before PPO; ``run_dir`` owns the
run folder (the cached full-model and static-program results are :mod:`polar_rl.search.results`); ``report``,
``plots`` and ``pareto`` write report.md, the PNGs and a sweep's frontier. Importing this package
imports none of them (``polar-rl baselines`` loads no SB3, gymnasium or W&B).
"""
