"""Data: TFDS datasets on local disk, read with random access through Grain.

datasets.py        builders (embedded digits, synthetic tokens, IDX files, a
                   user's builder by import path, imports, TFDS by name); splits
store.py           a data_dir: default place, per-dataset locks, imported versions
importing/         `jaxtrain data import`: CSV/Parquet/JSONL/npz/folders ->
                   versioned TFDS, rows validated, split by fraction/column/time, lags
                   (spec, rows, lags, tables, publishing; one kind rule: columns.Stats)
columns.py         tables read column-wise in chunks; Stats, the kind of a column
preprocess.py      fitted on the train split, saved with the run: scaling,
                   vocabularies, tokenizer, class weights; what models and tasks derive
input_pipeline.py  the data order as a pure function of (seed, epoch, step,
                   process), padded evaluation, prefetch to device
"""
