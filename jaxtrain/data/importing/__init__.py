"""`jaxtrain data import`: a user's files as a versioned TFDS dataset in a data_dir.

    jaxtrain data import messages.csv --name spam --label label --data_dir data

Reads CSV, Parquet, JSON Lines, NumPy .npz, or a folder with one sub-folder
per class (of text or image files); every value is checked against its
column's kind (declared, or inferred from all rows) before anything is
written, and a bad value is reported with its file, line and column. Rows are
split by seeded fraction, by a column naming each row's split, or by time
(everything before a cutoff trains: the honest split for forecasting).

Each import is a TFDS dataset (array_record) at `<data_dir>/<name>/<version>/`
with `schema.json` beside its files. The version's fingerprint covers the
source bytes and the import options: importing unchanged files again does
nothing, and changed or added files make the next version, which is what
`dataset.name="<name>"` then trains on (`"<name>:1.0.3"` pins one).

The package, in the order an import runs:

    spec.py        ImportSpec (the options), kinds, fingerprints, the schema and its table
    rows.py        rows from every format (tables, JSON Lines, Parquet, .npz, folders), their
                   kinds by columns.Stats (the rule the streamed path uses too) and values
    lags.py        lags by time within each series; which split each row is in
    tables.py      tables column-wise in bounded chunks (pass 1: kinds; pass 2: records), Beam
    publishing.py  run_import: the new version written under the dataset's lock, its history
"""

from jaxtrain.data.columns import RowError, parse_time
from jaxtrain.data.importing.lags import (
  add_lags,
  assign_splits,
  fraction_codes,
  parse_frequency,
  time_codes,
)
from jaxtrain.data.importing.publishing import TableDataset, run_import
from jaxtrain.data.importing.rows import (
  infer_schema,
  parse,
  read_prediction_rows,
  read_rows,
  validate_rows,
)
from jaxtrain.data.importing.spec import (
  KINDS,
  LABEL_KINDS,
  SCHEMA_FILE,
  SPLITS,
  ImportSpec,
  feature_name,
  fingerprints,
  read_schema,
  schema_table,
  source_files,
)
from jaxtrain.data.importing.tables import BeamTableDataset

__all__ = [
  "RowError",
  "parse_time",
  "add_lags",
  "assign_splits",
  "fraction_codes",
  "parse_frequency",
  "time_codes",
  "TableDataset",
  "run_import",
  "infer_schema",
  "parse",
  "read_prediction_rows",
  "read_rows",
  "validate_rows",
  "KINDS",
  "LABEL_KINDS",
  "SCHEMA_FILE",
  "SPLITS",
  "ImportSpec",
  "feature_name",
  "fingerprints",
  "read_schema",
  "schema_table",
  "source_files",
  "BeamTableDataset",
]
