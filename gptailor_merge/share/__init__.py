"""What a finished run is shared as: the report (`report`: Pareto front, layer map, plots)
and the Hugging Face Hub upload with its model card (`hub`). Reads journals and recipes only."""
