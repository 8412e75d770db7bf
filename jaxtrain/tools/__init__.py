"""Tools on top of the run loop: the command line, sweeps, reports, predictions, reruns.

cli.py      `jaxtrain train | sweep | report | inspect | rerun | data | predict | export`
sweep.py    Optuna studies of ordinary runs, pruning, best config
report.py   curves and sweep plots as HTML + PNGs
predict.py  `jaxtrain predict` (files) and `jaxtrain export` (jax.export)
rerun.py    `jaxtrain rerun`: train a manifest again, compare the bits
managed.py  SageMaker's and Vertex AI's environment: workdir, event files, model output
"""
