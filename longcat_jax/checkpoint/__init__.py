"""Reading and writing weights, below the models: the safetensors reader, the strict parameter-tree
filler, our chunked Orbax format and the checkpoint folder layout. Knows no model; each model keeps its
own name map from the original keys (`models/*/params.py`)."""
