//! LiveCalc's example pipelines live beside this crate as JSON DAGs (`dag_config_*.json`) with
//! their data under `data/`. The crate itself only carries `make-book`, the generator of the
//! synthetic model-point books (`data/book_10k.csv`).
