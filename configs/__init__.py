"""The built-in configs, shipped as `jaxtrain.configs`: `jaxtrain train --config digits` finds
configs/digits.py here from any directory (a path to any config file works too).

    digits           the embedded handwritten digits, CNN (the README's first command)
    mnist            Flax's MNIST example setup (TFDS mnist, or IDX files by dataset.path)
    spam             text classification of jaxtrain/sample_data/spam.csv (:transformer)
    breast_cancer    tabular classification (real data)
    diabetes         tabular regression, Huber loss (real data)
    demand           forecasting: time split, lags, calendar fields
    ratings          matrix factorization of ratings
    recommend        two-tower retrieval
    lm_124m, lm_350m GPT-2-shaped language models on synthetic tokens (lm_124m:350m)
    sweeps/          search spaces for `jaxtrain sweep --space`
"""
